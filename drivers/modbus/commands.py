"""The Modbus driver's commands of ``iiot-gateway`` (entry point ``iiot_gateway.commands``, see
:mod:`gateway.driver_commands`): ``tags import`` (a Kepware CSV export as YAML tag lines) and ``probe modbus``
/ ``probe modbus-rtu`` (every type x byte order x address base reading of a few registers).

Only argparse here: the handlers import the Kepware mapping and the driver (pymodbus) when they run."""

from __future__ import annotations

import argparse
import sys

from gateway.driver_commands import CommandContext

#: drivers whose tags ``tags import`` can write (they share drivers.modbus.config.ModbusTag)
MODBUS_DRIVERS = ("modbus_tcp", "modbus_rtu", "modbus_rtu_tcp")
EXIT_BAD_INPUT = 2


def cmd_tags_import(args: argparse.Namespace) -> int:
    """Print a Kepware CSV export as YAML tag lines; 0 all converted, 1 some rows failed, 2 no such file."""
    from drivers.modbus.kepware import NotKepwareCsv, import_csv

    try:
        with open(args.file, "rb") as fh:
            data = fh.read()
        result = import_csv(
            data, writable=args.writable, byte_order=args.byte_order or "ABCD", fix_names=args.fix_names
        )
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NotKepwareCsv as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    sys.stdout.write(result.yaml(args.file))
    for err in result.errors:
        print(f"{args.file}:{err}", file=sys.stderr)
    if result.multi_register and args.byte_order is None:
        print(
            f"{args.file}: note: Kepware keeps the word order of 32/64-bit values in the device settings, not in "
            "the CSV ('First word low' is on by default there: --byte-order CDAB); `iiot-gateway probe modbus` "
            "shows which order reads right",
            file=sys.stderr,
        )
    print(f"{args.file}: {len(result.tags)} tags imported, {len(result.errors)} rows failed", file=sys.stderr)
    return 1 if result.errors else 0


def cmd_probe(args: argparse.Namespace) -> int:
    from drivers.modbus.probe import main_probe

    return main_probe(args)


def add_tags_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tg = subparsers.add_parser("tags", help="tag tools: import a Kepware CSV export as YAML tag lines")
    tg_sub = tg.add_subparsers(dest="tags_command", required=True, metavar="TAGS_COMMAND")
    ti = tg_sub.add_parser("import", help="print a Kepware CSV export as the YAML lines of an asset's tags:")
    ti.add_argument("file", help="CSV exported from Kepware (File > Export CSV on a device or tag group)")
    ti.add_argument("--driver", required=True, choices=MODBUS_DRIVERS, help="driver of the asset")
    ti.add_argument(
        "--writable",
        action="store_true",
        help="emit writable: true for tags Kepware had as Read/Write (default: a comment only)",
    )
    ti.add_argument(
        "--byte-order",
        choices=["ABCD", "CDAB", "BADC", "DCBA"],
        default=None,
        help="byte order of every 32/64-bit tag (Kepware keeps it per device; default ABCD)",
    )
    ti.add_argument(
        "--fix-names",
        action="store_true",
        help="replace characters our tag names do not allow (spaces ...) with '_' instead of failing",
    )
    ti.set_defaults(func=cmd_tags_import)


def add_probe_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pr = subparsers.add_parser("probe", help="read registers and print every type x byte order x address base reading")
    pr_sub = pr.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    pt = pr_sub.add_parser("modbus", help="a Modbus TCP device: probe modbus HOST[:PORT] --address 40133")
    pt.add_argument("target", metavar="HOST[:PORT]", help="device address; port 502 when not given")
    pu = pr_sub.add_parser("modbus-rtu", help="a Modbus RTU slave: probe modbus-rtu /dev/ttyUSB0 --address 40133")
    pu.add_argument("target", metavar="PORT", help="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    pu.add_argument("--baudrate", type=int, default=9600)
    pu.add_argument("--parity", default="E", help="N, E or O (or none, even, odd); checked as the config checks it")
    pu.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    for q in (pt, pu):
        q.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
        q.add_argument(
            "--address", required=True, help="register as the manual writes it: 40133, 30001, 4x0133, hr:132"
        )
        q.add_argument(
            "--expect", type=float, default=None, help="the value the device should show: matching readings are marked"
        )
        q.add_argument(
            "--count",
            type=int,
            choices=[1, 2, 4],
            default=4,
            help="registers of the value (1, 2 or 4; default 4: every type)",
        )
        q.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)")
        q.add_argument("--json", action="store_true", help="print the readings as JSON")
        q.set_defaults(func=cmd_probe)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], context: CommandContext) -> None:
    """Entry point of ``iiot_gateway.commands``: add ``tags`` and ``probe``."""
    add_tags_command(subparsers)
    add_probe_command(subparsers)
