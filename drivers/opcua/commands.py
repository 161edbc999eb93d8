"""The OPC UA driver's commands of ``iiot-gateway`` (entry point ``iiot_gateway.commands``, see
:mod:`gateway.driver_commands`): ``browse`` and ``trust``.

Only their arguments live here, apart from :mod:`drivers.opcua.tools`, so that building the CLI parser (which
every ``iiot-gateway`` command does) does not import asyncua."""

from __future__ import annotations

import argparse
import functools

from gateway.driver_commands import CommandContext


def add_browse_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("endpoint", help="server endpoint, e.g. opc.tcp://192.168.0.10:4840/")
    p.add_argument("--depth", type=int, default=5, help="levels below Objects to list (default 5)")
    p.add_argument("--all", action="store_true", help="also list namespace 0 (the Server object and its diagnostics)")
    p.add_argument("--security", default="None", metavar="POLICY[/MODE]",
                   help="e.g. Basic256Sha256/SignAndEncrypt (default None)")
    p.add_argument("--allow-insecure", action="store_true", help="allow policy None towards a remote endpoint")
    p.add_argument("-u", "--username")
    p.add_argument("-P", "--password-env", metavar="VAR", help="read the password from this environment variable")
    p.add_argument("--state-dir", default="state", help="gateway state directory holding pki/ (default: state)")
    p.add_argument("--timeout", default="5s", help="timeout of each request (default 5s)")


def add_trust_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=None, help="gateway state directory holding pki/ (default: state)")
    p.add_argument("-c", "--config", help="take the state directory from this gateway config's gateway.state_dir")
    sub = p.add_subparsers(dest="trust_command", required=True, metavar="ACTION")
    sub.add_parser("list", help="list rejected and trusted server certificates and the gateway's own")
    a = sub.add_parser("accept", help="trust a rejected server certificate (move it from rejected/ to trusted/)")
    a.add_argument("which", help="file name in rejected/ or the start of its SHA-1 thumbprint")
    sub.add_parser("own", help="print the gateway's own certificate file (give it to the servers to trust)")


def cmd_browse(args: argparse.Namespace) -> int:
    from drivers.opcua.tools import main_browse

    return main_browse(args)


def cmd_trust(context: CommandContext, args: argparse.Namespace) -> int:
    if args.config and not args.state_dir:  # the tools do not load gateway configs themselves
        args.state_dir = context.state_dir_of(args.config)
    from drivers.opcua.tools import main_trust

    return main_trust(args)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], context: CommandContext) -> None:
    """Entry point of ``iiot_gateway.commands``: add ``browse`` and ``trust``."""
    b = subparsers.add_parser("browse", help="list an OPC UA server's variables as YAML tag lines (node ids, types)")
    add_browse_arguments(b)
    b.set_defaults(func=cmd_browse)
    t = subparsers.add_parser("trust", help="OPC UA certificates: list rejected/trusted servers, trust one, show own")
    add_trust_arguments(t)
    t.set_defaults(func=functools.partial(cmd_trust, context))
