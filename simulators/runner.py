"""Run the software PLCs standalone: ``iiot-gateway simulate [FILE] [--host H] [--modbus-port P] [--opcua-port P]``.

:func:`run_simulators` is the coroutine (used by ``simulate`` and ``demo``); :func:`main_simulate` is the
command's entry point, called by the gateway CLI with its parsed arguments (or a list of argv strings), and
:func:`add_simulate_arguments` declares those arguments on an ``argparse`` parser.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from simulators.config import DEFAULT_PLANT, PlantConfigError
from simulators.modbus_rtu_sim import ModbusRtuSimulator, RtuSlave
from simulators.modbus_sim import ModbusSimulator
from simulators.opcua_security import SimulatorSecurity
from simulators.opcua_sim import OpcUaSimulator
from simulators.plant import Plant
from simulators.serial_instrument import instrument_from_args, start_and_announce

log = logging.getLogger(__name__)


async def run_simulators(
    plant_path: str | Path | None = None,
    host: str = "127.0.0.1",
    modbus_port: int = 5020,
    opcua_port: int = 4840,
    stop_event: asyncio.Event | None = None,
    opcua_security: SimulatorSecurity | None = None,
    rtu_units: Sequence[int] = (),
    rtu_link: str | None = None,
) -> None:
    """Serve the plant file (default: the bundled plant) on Modbus TCP and OPC UA until ``stop_event`` is set.

    Without ``stop_event`` it runs until cancelled. A plant file without a ``modbus`` (``opcua``) section
    starts no Modbus (OPC UA) server. Prints where each server listens once both are up. Raises
    :class:`~simulators.config.PlantConfigError` for a bad plant file and ``OSError`` when a port is taken
    (then nothing is left running).
    """
    plant = Plant.load(plant_path)
    sims: list[ModbusSimulator | OpcUaSimulator] = []
    if plant.config.modbus is not None:
        sims.append(ModbusSimulator(plant, host=host, port=modbus_port))
    if plant.config.opcua is not None:
        sims.append(OpcUaSimulator(plant, host=host, port=opcua_port, security=opcua_security))
    rtu = ModbusRtuSimulator({u: RtuSlave.from_plant(plant) for u in rtu_units}, link=rtu_link) if rtu_units else None
    try:
        if rtu is not None:
            await rtu.start()
        results = await asyncio.gather(*(s.start() for s in sims), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        print(f"plant {Path(plant_path) if plant_path else DEFAULT_PLANT}", flush=True)
        for sim in sims:
            if isinstance(sim, ModbusSimulator):
                print(
                    f"  Modbus TCP PLC  {sim.host}:{sim.port}  unit {sim.unit}  ({len(sim.point_names)} points)",
                    flush=True,
                )
            else:
                print(
                    f"  OPC UA PLC      {sim.endpoint}  {sim.section.namespace} = ns={sim.namespace_index}  "
                    f"({len(sim.node_names)} variables)",
                    flush=True,
                )
                if sim.security is not None:
                    print(
                        f"    secured: certificate {sim.security.cert_file}; it trusts the client certificates "
                        f"in {sim.security.trusted}/ (refused ones land in {sim.security.rejected}/)",
                        flush=True,
                    )
        if rtu is not None:
            units = ",".join(map(str, rtu_units))
            print(
                f"  Modbus RTU PLC  {rtu.path}  units {units}  (the modbus point map; in the config: "
                f"driver: modbus_rtu, port: {rtu.path}, parity: N)",
                flush=True,
            )
        if stop_event is None:
            await asyncio.Future()  # until cancelled
        else:
            await stop_event.wait()
    finally:
        for sim in reversed(sims):
            await sim.stop()
        if rtu is not None:
            await rtu.stop()


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``[FILE] --host --modbus-port --opcua-port`` on ``parser`` (the ``simulate`` sub-command)."""
    parser.add_argument(
        "file",
        nargs="?",
        default=None,
        help=f"plant file (default: the bundled {DEFAULT_PLANT.name}, a copy of config/simulator.yaml)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--modbus-port", type=int, default=5020, help="Modbus TCP port (default 5020)")
    parser.add_argument("--opcua-port", type=int, default=4840, help="OPC UA port (default 4840)")
    parser.add_argument(
        "--opcua-secure",
        metavar="PKI_DIR",
        default=None,
        help="serve OPC UA secured only, certificates under PKI_DIR (own/, trusted/, rejected/)",
    )
    parser.add_argument(
        "--opcua-user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="with --opcua-secure: a user the simulator accepts (repeatable)",
    )
    add_rtu_arguments(parser)


def add_rtu_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``--rtu [UNITS] --rtu-link PATH`` (Modbus RTU slaves on a pseudo-terminal)."""
    parser.add_argument(
        "--rtu",
        nargs="?",
        const="1",
        default=None,
        metavar="UNITS",
        help="also serve the modbus point map as Modbus RTU slaves on a pty, unit ids comma "
        "separated (default 1); prints the pty path to put in the config's port:",
    )
    parser.add_argument(
        "--rtu-link", metavar="PATH", default=None, help="with --rtu: a stable symlink to the pty, e.g. /tmp/iiot-rtu"
    )


def _rtu_units(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        units = tuple(int(u) for u in text.split(","))
    except ValueError:
        raise SystemExit(f"--rtu: expected unit ids like 1,2,3, not {text!r}") from None
    if not all(1 <= u <= 247 for u in units):
        raise SystemExit(f"--rtu: unit ids are 1..247, not {text!r}")
    return units


async def _serve_until_signal(ns: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    instrument = instrument_from_args(ns)
    try:
        if instrument is not None:
            await start_and_announce(instrument)
        await run_simulators(
            ns.file,
            ns.host,
            ns.modbus_port,
            ns.opcua_port,
            stop_event=stop,
            opcua_security=_opcua_security(ns),
            rtu_units=_rtu_units(ns.rtu),
            rtu_link=ns.rtu_link,
        )
    finally:
        if instrument is not None:
            await instrument.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)


def _opcua_security(ns: argparse.Namespace) -> SimulatorSecurity | None:
    if not getattr(ns, "opcua_secure", None):
        return None
    users = dict(u.split(":", 1) for u in ns.opcua_user if ":" in u)
    return SimulatorSecurity(Path(ns.opcua_secure), users=users)


def main_simulate(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Entry point of ``iiot-gateway simulate``; returns the exit code (0 stopped by Ctrl-C / SIGTERM,
    2 bad plant file, 1 a port could not be bound).

    ``args``: a namespace with ``file``, ``host``, ``modbus_port``, ``opcua_port`` (see
    :func:`add_simulate_arguments`), or argv strings (``None``: ``sys.argv[1:]``).
    """
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="iiot-gateway simulate", description="Run the software PLCs.")
        add_simulate_arguments(parser)
        args = parser.parse_args(list(args) if args is not None else None)
    ns = argparse.Namespace(
        file=getattr(args, "file", None),
        host=getattr(args, "host", "127.0.0.1"),
        modbus_port=getattr(args, "modbus_port", 5020),
        opcua_port=getattr(args, "opcua_port", 4840),
        opcua_secure=getattr(args, "opcua_secure", None),
        opcua_user=getattr(args, "opcua_user", None) or [],
        rtu=getattr(args, "rtu", None),
        rtu_link=getattr(args, "rtu_link", None),
        **{
            k: getattr(args, k, None)
            for k in ("instrument", "instrument_stream", "instrument_checksum", "instrument_link")
        },
    )
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("asyncua", "pymodbus"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        asyncio.run(_serve_until_signal(ns))
    except PlantConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    print("simulators stopped", flush=True)
    return 0
