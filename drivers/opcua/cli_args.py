"""Arguments of ``iiot-gateway browse`` and ``trust`` (kept apart from :mod:`drivers.opcua.tools` so that
building the CLI parser does not import asyncua)."""

from __future__ import annotations

import argparse


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
