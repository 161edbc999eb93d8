"""Driver sub-commands of ``iiot-gateway`` come through the ``iiot_gateway.commands`` entry points
(gateway/driver_commands.py): a package installed next to the gateway adds its command without a change in
``gateway/``, gets the config's state directory through the context, and a broken or clashing package is
left out with a warning while every other command keeps working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import gateway_config

REPO = Path(__file__).resolve().parents[1]

PLUGIN = """\
import argparse


def register(subparsers, context):
    p = subparsers.add_parser("hello", help="say where the state lives")
    p.add_argument("--config", required=True)
    p.set_defaults(func=lambda args: print("state:", context.state_dir_of(args.config)) or 3)


def clash(subparsers, context):
    subparsers.add_parser("half", help="added before the clash")
    subparsers.add_parser("run", help="a second run")
"""

ENTRY_POINTS = """\
[iiot_gateway.commands]
hello = hello_cmd:register
broken = no_such_module_here:register
clash = hello_cmd:clash
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory holding what ``pip install`` of a plug-in would leave in site-packages."""
    site = tmp_path / "site"
    dist = site / "hello_cmd-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-cmd\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "hello_cmd.py").write_text(PLUGIN)
    return site


def cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_a_third_party_command_gets_the_state_dir_of_a_config(site, tmp_path) -> None:
    cfg = gateway_config(
        tmp_path,
        gateway={"state_dir": tmp_path / "st"},
        assets_yaml="""\
        - id: press
          source: {driver: modbus_tcp, host: 127.0.0.1, port: 5020}
          tags: [{name: p, address: 40001, type: int16}]
        """,
    )
    done = cli(site, "hello", "--config", str(cfg))
    assert (done.returncode, done.stdout) == (3, f"state: {tmp_path / 'st'}\n"), done.stderr


def test_a_bad_config_exits_2_with_its_line(site, tmp_path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("gateway: {id: gw, namespace: acme/t}\nmqtt: {host: 127.0.0.1, prot: 1883}\nassets: []\n")
    done = cli(site, "hello", "--config", str(cfg))
    assert done.returncode == 2 and done.stdout == ""
    assert f"{cfg}:2: mqtt.prot" in done.stderr


def test_broken_and_clashing_packages_are_left_out_the_others_stay(site) -> None:
    done = cli(site, "--help")
    assert done.returncode == 0
    for command in ("hello", "browse", "trust", "probe", "tags", "run"):
        assert f"    {command} " in done.stdout, command
    assert "commands of 'broken' cannot be added: ModuleNotFoundError" in done.stderr
    assert "commands of 'clash' cannot be added: ArgumentError" in done.stderr
    assert "a second run" not in done.stdout
    assert "half" not in done.stdout  # what the clashing package added before the clash is gone too
    assert cli(site, "half").returncode == 2  # argparse: invalid choice
