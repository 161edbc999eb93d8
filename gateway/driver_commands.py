"""Sub-commands a driver package adds to ``iiot-gateway`` (OPC UA ``browse`` and ``trust``, Modbus ``probe``).

A driver package names a function ``register(subparsers, context)`` through the entry-point group
``iiot_gateway.commands`` (``name = "package.module:register"``; the name only orders the commands and
names the package in a warning). The gateway calls it once while it builds its parser, on every
invocation, ``run`` included:

- ``subparsers`` is the sub-parsers action of ``iiot-gateway``: ``subparsers.add_parser("browse", help=...)``
  adds a command; ``set_defaults(func=handler)`` on it sets the handler, ``handler(args) -> int`` (the exit
  code; 2 for bad arguments, as argparse uses).
- ``context`` is a :class:`CommandContext`: what the command line offers the driver's tools.

``register`` must stay light: it imports argparse-level code only, and the handler imports the protocol
library when it runs (``iiot-gateway run`` of a plant without OPC UA never imports asyncua). A package
whose ``register`` fails, or adds a command name that is taken, is logged and left out, with any command it
had added before it failed; the other commands still work. This module is a contract module: drivers may import it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "iiot_gateway.commands"


@dataclass(frozen=True)
class CommandContext:
    """What ``iiot-gateway`` gives the sub-commands of a driver.

    ``state_dir_of(path)`` loads the gateway config ``path`` the way ``validate`` does and returns its
    ``gateway.state_dir`` (where the gateway keeps certificates and the spool); an invalid config prints its
    errors with file and line and exits with status 2 (``SystemExit``), as ``validate`` does.
    """

    state_dir_of: Callable[[str], Path]


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], context: CommandContext) -> None:
    """Run ``register(subparsers, context)`` of every ``iiot_gateway.commands`` entry point, in name order."""
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        names, shown = set(subparsers.choices), len(subparsers._choices_actions)
        try:
            ep.load()(subparsers, context)
        except Exception as exc:  # a broken plug-in must not take the command line down
            logging.getLogger("gateway.driver_commands").warning(
                "commands of %r cannot be added: %s: %s", ep.name, type(exc).__name__, exc
            )
            # nor leave half of itself behind (argparse keeps what add_parser added before the failure)
            for name in set(subparsers.choices) - names:
                del subparsers.choices[name]
            del subparsers._choices_actions[shown:]
