"""``iiot-gateway`` command line: run, validate, schema, demo, simulate, sub, browse, trust, tags, probe."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from gateway import __version__

EXIT_CONFIG = 2


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # third-party libraries are chatty at INFO; their failures reach us as exceptions
    for noisy in ("asyncua", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "debug" else logging.INFO)
    # pymodbus logs every failed connect and timeout at WARNING/ERROR with frame dumps; the engine already
    # logs each failure once and its recovery once from the exceptions it raises
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL if level != "debug" else logging.DEBUG)


def _load_or_exit(path: str) -> Any:
    from gateway.config.cli import load_or_exit

    return load_or_exit(path)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import run_gateway

    cfg = _load_or_exit(args.file)
    setup_logging(args.log_level or cfg.gateway.log_level)
    return asyncio.run(run_gateway(cfg, config_path=args.file))


def cmd_validate(args: argparse.Namespace) -> int:
    from gateway.config.cli import cmd_validate

    return cmd_validate(args.file)


def cmd_schema(args: argparse.Namespace) -> int:
    from gateway.config.cli import cmd_schema

    if args.markdown:
        from gateway.config.reference import cmd_markdown

        return cmd_markdown(args.output)
    return cmd_schema()


#: drivers whose tags ``tags import`` can write (they share drivers.modbus.config.ModbusTag)
MODBUS_DRIVERS = ("modbus_tcp", "modbus_rtu", "modbus_rtu_tcp")


def cmd_tags_import(args: argparse.Namespace) -> int:
    """Print a Kepware CSV export as YAML tag lines; 0 all converted, 1 some rows failed, 2 not such a file."""
    if args.driver not in MODBUS_DRIVERS:
        print(f"tags import: driver {args.driver!r} is not supported; use one of {', '.join(MODBUS_DRIVERS)}",
              file=sys.stderr)
        return EXIT_CONFIG
    # lazy: the Modbus mapping lives with the driver (a driver-CLI entry point would be the clean form)
    from drivers.modbus.kepware import NotKepwareCsv, import_csv

    try:
        with open(args.file, "rb") as fh:
            data = fh.read()
        result = import_csv(data, writable=args.writable, byte_order=args.byte_order or "ABCD",
                            fix_names=args.fix_names)
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    except NotKepwareCsv as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.write(result.yaml(args.file))
    for err in result.errors:
        print(f"{args.file}:{err}", file=sys.stderr)
    if result.multi_register and args.byte_order is None:
        print(f"{args.file}: note: Kepware keeps the word order of 32/64-bit values in the device settings, not in "
              "the CSV ('First word low' is on by default there: --byte-order CDAB); `iiot-gateway probe modbus` "
              "shows which order reads right", file=sys.stderr)
    print(f"{args.file}: {len(result.tags)} tags imported, {len(result.errors)} rows failed", file=sys.stderr)
    return 1 if result.errors else 0


def cmd_probe(args: argparse.Namespace) -> int:
    from drivers.modbus.probe import main_probe  # lazy, as for browse: the CLI composes

    return main_probe(args)


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.runner import main_simulate

    setup_logging(args.log_level or "info")
    return main_simulate(args) or 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import main_demo

    setup_logging(args.log_level or "info")
    return main_demo(args)


def _state_dir_of_config(args: argparse.Namespace) -> None:
    """``--config FILE`` without ``--state-dir``: the config's ``gateway.state_dir`` (the driver's tools do
    not load configs themselves)."""
    if getattr(args, "config", None) and not getattr(args, "state_dir", None):
        args.state_dir = _load_or_exit(args.config).gateway.state_dir


def cmd_browse(args: argparse.Namespace) -> int:
    from drivers.opcua.tools import main_browse  # the CLI composes; the engine never imports a driver

    _state_dir_of_config(args)
    return main_browse(args)


def cmd_trust(args: argparse.Namespace) -> int:
    from drivers.opcua.tools import main_trust

    _state_dir_of_config(args)
    return main_trust(args)


def cmd_sub(args: argparse.Namespace) -> int:
    from gateway.subscribe import main_sub

    return main_sub(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from gateway.bench import main_bench

    setup_logging(args.log_level or "warning")
    return main_bench(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iiot-gateway", description="Edge data-acquisition gateway for the shop floor.")
    p.add_argument("--version", action="version", version=f"iiot-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the gateway on a config file")
    r.add_argument("file", help="YAML config, e.g. config/demo.yaml")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a config file; exit 0 when valid, 2 with every error")
    v.add_argument("file")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("schema", help="print the JSON Schema of the config (for editor completion)")
    s.add_argument("--markdown", action="store_true", help="write the config reference (docs/config.md) instead")
    s.add_argument("-o", "--output", default="docs/config.md",
                   help="with --markdown: file to write, '-' for stdout (default: docs/config.md)")
    s.set_defaults(func=cmd_schema)

    tg = sub.add_parser("tags", help="tag tools: import a Kepware CSV export as YAML tag lines")
    tg_sub = tg.add_subparsers(dest="tags_command", required=True, metavar="TAGS_COMMAND")
    ti = tg_sub.add_parser("import", help="print a Kepware CSV export as the YAML lines of an asset's tags:")
    ti.add_argument("file", help="CSV exported from Kepware (File > Export CSV on a device or tag group)")
    ti.add_argument("--driver", required=True, help=f"driver of the asset: {', '.join(MODBUS_DRIVERS)}")
    ti.add_argument("--writable", action="store_true",
                    help="emit writable: true for tags Kepware had as Read/Write (default: a comment only)")
    ti.add_argument("--byte-order", choices=["ABCD", "CDAB", "BADC", "DCBA"], default=None,
                    help="byte order of every 32/64-bit tag (Kepware keeps it per device; default ABCD)")
    ti.add_argument("--fix-names", action="store_true",
                    help="replace characters our tag names do not allow (spaces ...) with '_' instead of failing")
    ti.set_defaults(func=cmd_tags_import)

    pr = sub.add_parser("probe", help="read registers and print every type x byte order x address base reading")
    pr_sub = pr.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    pt = pr_sub.add_parser("modbus", help="a Modbus TCP device: probe modbus HOST[:PORT] --address 40133")
    pt.add_argument("target", metavar="HOST[:PORT]", help="device address; port 502 when not given")
    pu = pr_sub.add_parser("modbus-rtu", help="a Modbus RTU slave: probe modbus-rtu /dev/ttyUSB0 --address 40133")
    pu.add_argument("target", metavar="PORT", help="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    pu.add_argument("--baudrate", type=int, default=9600)
    pu.add_argument("--parity", choices=["N", "E", "O"], default="E")
    pu.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    for q in (pt, pu):
        q.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
        q.add_argument("--address", required=True,
                       help="register as the manual writes it: 40133, 30001, 4x0133, hr:132")
        q.add_argument("--expect", type=float, default=None,
                       help="the value the device should show: matching readings are marked")
        q.add_argument("--count", type=int, choices=[1, 2, 4], default=4,
                       help="registers of the value (1, 2 or 4; default 4: every type)")
        q.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)")
        q.add_argument("--json", action="store_true", help="print the readings as JSON")
        q.set_defaults(func=cmd_probe)

    sim = sub.add_parser("simulate", help="run the bundled Modbus TCP and OPC UA PLC simulators")
    sim.add_argument("file", nargs="?", help="plant model YAML (default: the bundled plant)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--modbus-port", type=int, default=5020)
    sim.add_argument("--opcua-port", type=int, default=4840)
    sim.add_argument("--opcua-secure", metavar="PKI_DIR", default=None,
                     help="serve OPC UA secured only (Basic256Sha256, Aes128/Aes256; Sign/SignAndEncrypt), with its "
                     "certificate in PKI_DIR/own and the client certificates it trusts in PKI_DIR/trusted")
    sim.add_argument("--opcua-user", action="append", default=[], metavar="NAME:PASSWORD",
                     help="with --opcua-secure: a user the simulator accepts (repeatable)")
    from simulators.serial_instrument import add_instrument_arguments

    add_instrument_arguments(sim)
    sim.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sim.add_argument("--rtu", nargs="?", const="1", default=None, metavar="UNITS",
                     help="also serve Modbus RTU slaves (unit ids, default 1) on a pty and print its path")
    sim.add_argument("--rtu-link", metavar="PATH", default=None, help="with --rtu: a stable symlink to the pty")
    sim.set_defaults(func=cmd_simulate)

    d = sub.add_parser("demo", help="simulators + broker + gateway on config/demo.yaml; Ctrl-C stops all")
    d.add_argument("--config", default=None, help="gateway config (default: config/demo.yaml)")
    d.add_argument("--mqtt-port", type=int, default=None, help="override the config's broker port")
    d.add_argument("--modbus-port", type=int, default=None, help="override the Modbus simulator port")
    d.add_argument("--opcua-port", type=int, default=None, help="override the OPC UA simulator port")
    d.add_argument("--api-port", type=int, default=None, help="override the status API port")
    d.add_argument("--state-dir", default=None, help="override gateway.state_dir (spool, certificates)")
    d.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("sub", help="print MQTT messages (a small mosquitto_sub for machines without it)")
    m.add_argument("topic", nargs="?", default="#")
    m.add_argument("-H", "--host", default="127.0.0.1")
    m.add_argument("-p", "--port", type=int, default=1883)
    m.add_argument("-u", "--username")
    m.add_argument("-P", "--password-env", metavar="VAR", help="read the password from this environment variable")
    m.add_argument("-n", "--count", type=int, default=0, help="exit after this many messages (0: never)")
    m.set_defaults(func=cmd_sub)

    from drivers.opcua.cli_args import add_browse_arguments, add_trust_arguments

    b = sub.add_parser("browse", help="list an OPC UA server's variables as YAML tag lines (node ids, types)")
    add_browse_arguments(b)
    b.set_defaults(func=cmd_browse)

    t = sub.add_parser("trust", help="OPC UA certificates: list rejected/trusted servers, trust one, show own")
    add_trust_arguments(t)
    t.set_defaults(func=cmd_trust)
    bn = sub.add_parser("bench", help="measure throughput, CPU, bytes, latency and memory on this machine")
    bn.add_argument("--quick", action="store_true", help="shorter runs (under a minute)")
    bn.add_argument("--json", metavar="FILE", help="also write the JSON document to FILE")
    bn.add_argument("--only", metavar="PART[,PART]",
                    help="run only these parts: hot_path, uplink, ring_buffer, payload, end_to_end, latency, "
                         "scale, startup")
    bn.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    bn.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `iiot-gateway schema | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
