"""``iiot-gateway`` command line: run, validate, schema, demo, simulate, sub, bench, and the commands the
drivers register through the ``iiot_gateway.commands`` entry points (browse, trust, tags, probe)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.driver_commands import CommandContext, add_commands


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


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.runner import main_simulate

    setup_logging(args.log_level or "info")
    return main_simulate(args) or 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import main_demo

    setup_logging(args.log_level or "info")
    return main_demo(args)


def _state_dir_of(config_path: str) -> Path:
    """``gateway.state_dir`` of a config file, for the drivers' tools (they do not load configs themselves)."""
    return Path(_load_or_exit(config_path).gateway.state_dir)


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

    # the drivers' own commands (browse, trust, probe, tags): entry points, see gateway/driver_commands.py
    add_commands(sub, CommandContext(state_dir_of=_state_dir_of))

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
