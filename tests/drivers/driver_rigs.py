"""What the driver conformance suite needs per driver: a "rig" (its bundled simulator and a config), and one
way to create a driver whatever the driver is.

A rig starts a real device for one test (a simulator on a socket or a pty, a directory for the file driver),
says which tag is bad, which one can be written, and how to make the device go away and come back (the TCP
proxy refuses and cuts, a pty simulator is stopped and started again on the same symlink). Every driver in
``registry()`` needs an entry in :data:`RIGS`; tests/drivers/test_conformance.py fails for one without.

The example driver of docs/writing-a-driver.md (examples/file_driver) is loaded through a real entry point:
:func:`example_installed` writes the ``*.dist-info`` that ``pip install`` would write into a temporary
directory on ``sys.path``, so ``importlib.metadata`` finds it as it finds any installed distribution.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import TcpProxy, free_port

from gateway.driver import ENTRY_POINT_GROUP, Driver, DriverContext, Shared, TagMeta, registry
from simulators.codec import encode_number
from simulators.modbus_rtu_sim import ModbusRtuSimulator, RtuSlave
from simulators.modbus_sim import ModbusSimulator
from simulators.opcua_sim import OpcUaSimulator
from simulators.serial_instrument import SerialInstrument

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO / "examples" / "file_driver"
EXAMPLE_MODULE = EXAMPLE_DIR / "iiot_file_driver.py"
EXAMPLE = "file"


# ------------------------------------------------------------------------------------------ the example driver


def write_dist_info(site: Path) -> Path:
    """The metadata ``pip install examples/file_driver`` leaves in site-packages (name, version, entry point)."""
    dist = site / "iiot_file_driver-0.1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: iiot-file-driver\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{EXAMPLE} = iiot_file_driver:SPEC\n")
    return dist


@contextlib.contextmanager
def example_installed(site: Path) -> Iterator[list[Path]]:
    """The example driver registered as if pip-installed, for the duration; yields the ``sys.path`` entries
    (a child process needs them on ``PYTHONPATH``)."""
    write_dist_info(site)
    paths = [site, EXAMPLE_DIR]
    sys.path[:0] = [str(p) for p in paths]
    registry.cache_clear()
    try:
        yield paths
    finally:
        for p in paths:
            sys.path.remove(str(p))
        sys.modules.pop("iiot_file_driver", None)
        registry.cache_clear()


# ------------------------------------------------------------------------------------------ creating drivers


def make_driver(name: str, source: Any, tags: list[Any], context: DriverContext) -> Driver:
    """The driver ``name`` for a validated source and tags, as the gateway creates it."""
    return registry()[name].create(source, tags, context)


def models(name: str) -> tuple[Any, Any]:
    """``(SourceConfig, TagConfig)`` of a registered driver."""
    spec = registry()[name]
    return spec.SourceConfig, spec.TagConfig


# ----------------------------------------------------------------------------------------------------- rigs


@dataclass
class Rig:
    """One driver's device and config for the conformance suite.

    ``tags`` (dicts, as in YAML) hold one ``bad`` tag the device cannot serve; ``expected`` maps good tags to
    the value a read gives. ``write`` is ``(tag, value, read back)``, ``unwritable`` ``(tag, value)`` a value
    that tag cannot hold; ``write is None`` for a read-only driver (its writes raise TagNotWritable).
    """

    source: dict[str, Any] = field(default_factory=dict)
    tags: list[dict[str, Any]] = field(default_factory=list)
    bad: str = ""
    expected: dict[str, Any] = field(default_factory=dict)
    write: tuple[str, Any, Any] | None = None
    unwritable: tuple[str, Any] | None = None

    async def start(self, tmp_path: Path) -> None:
        raise NotImplementedError

    async def away(self) -> None:
        """The device becomes unreachable (link cut, cable pulled, directory unmounted)."""
        raise NotImplementedError

    async def back(self) -> None:
        """The device is reachable again, at the same address."""
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class _ProxiedRig(Rig):
    """A TCP device behind :class:`helpers.TcpProxy`: away = refuse new connections and cut the open ones."""

    proxy: TcpProxy

    async def _proxy(self, port: int) -> int:
        self.proxy = TcpProxy("127.0.0.1", port)
        await self.proxy.accept()
        return self.proxy.port

    async def away(self) -> None:
        await self.proxy.refuse()
        self.proxy.cut()

    async def back(self) -> None:
        await self.proxy.accept()


# the bundled plant (simulators/plant.yaml): constants on the test bench, tables hr 300 / ir 200
_MODBUS_TAGS: list[dict[str, Any]] = [
    {"name": "int16", "address": "40101", "type": "int16", "writable": True},
    {"name": "float32", "address": "40131", "type": "float32", "byte_order": "ABCD"},
    {"name": "scaled", "address": "40235", "type": "int16", "scale": 0.1, "offset": -50},
    {"name": "outside", "address": "30201", "type": "uint16"},  # ir has 200 registers: exception 2
]
_MODBUS_EXPECTED = {"int16": -12345, "float32": -1234.5, "scaled": 21.5}


class ModbusTcpRig(_ProxiedRig):
    """The bundled Modbus TCP PLC."""

    async def start(self, tmp_path: Path) -> None:
        self.sim = ModbusSimulator(None, host="127.0.0.1", port=free_port())
        await self.sim.start()
        port = await self._proxy(self.sim.port)
        self.source = {"driver": "modbus_tcp", "host": "127.0.0.1", "port": port, "unit": 1, "timeout": 1}
        self.tags, self.bad, self.expected = _MODBUS_TAGS, "outside", _MODBUS_EXPECTED
        self.write, self.unwritable = ("int16", 1234, 1234), ("int16", 40000)

    async def stop(self) -> None:
        await self.proxy.close()
        await self.sim.stop()


def _rtu_line(link: str | None = None) -> ModbusRtuSimulator:
    """Unit 7 with 100 registers per table: int16 -7 at hr:0, float32 10.5 at hr:2 (reads past 100: exception 2)."""
    slave = RtuSlave.blank(100)
    slave.set_registers("hr", 0, encode_number("int16", -7, "ABCD"))
    slave.set_registers("hr", 2, encode_number("float32", 10.5, "ABCD"))
    return ModbusRtuSimulator({7: slave}, link=link)


_RTU_TAGS: list[dict[str, Any]] = [
    {"name": "int16", "address": "hr:0", "type": "int16", "writable": True},
    {"name": "float32", "address": "hr:2", "type": "float32"},
    {"name": "outside", "address": "ir:150", "type": "uint16"},
]
_RTU_SOURCE: dict[str, Any] = {"unit": 7, "timeout": 1, "response_timeout": "200ms"}


class PtyRig(Rig):
    """A bundled simulator on a pty: away = the simulator stopped (the pty closes), back = started again."""

    device: Any  # a ModbusRtuSimulator or a SerialInstrument: start() / stop()

    async def away(self) -> None:
        await self.device.stop()

    async def back(self) -> None:
        await self.device.start()

    async def stop(self) -> None:
        await self.device.stop()


class ModbusRtuRig(PtyRig):
    """Modbus RTU slaves on a pty, under a stable symlink: away = simulator stopped (the pty closes)."""

    async def start(self, tmp_path: Path) -> None:
        self.device = _rtu_line(link=str(tmp_path / "rs485"))
        await self.device.start()
        # parity N: a pty has none (the default, E, is refused by the kernel)
        self.source = {"driver": "modbus_rtu", "port": self.device.path, "parity": "N", **_RTU_SOURCE}
        self.tags, self.bad, self.expected = _RTU_TAGS, "outside", {"int16": -7, "float32": 10.5}
        self.write, self.unwritable = ("int16", -300, -300), ("int16", 1 << 15)


class ModbusRtuTcpRig(_ProxiedRig):
    """RTU frames over TCP (a serial-to-Ethernet converter) from the same simulator, behind the TCP proxy."""

    async def start(self, tmp_path: Path) -> None:
        self.sim = _rtu_line()
        port = await self._proxy(await self.sim.start_tcp())
        self.source = {"driver": "modbus_rtu_tcp", "host": "127.0.0.1", "port": port, **_RTU_SOURCE}
        self.tags, self.bad, self.expected = _RTU_TAGS, "outside", {"int16": -7, "float32": 10.5}
        self.write, self.unwritable = ("int16", -300, -300), ("int16", 1 << 15)

    async def stop(self) -> None:
        await self.proxy.close()
        await self.sim.stop()


class OpcUaRig(_ProxiedRig):
    """The bundled OPC UA PLC (ns=2, urn:acme:oven)."""

    async def start(self, tmp_path: Path) -> None:
        self.sim = OpcUaSimulator(None, host="127.0.0.1", port=free_port(), clock=False)
        await self.sim.start()
        port = await self._proxy(self.sim.port)
        self.source = {"driver": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{port}/", "timeout": 2}
        self.tags = [
            {"name": "setpoint", "node": "ns=2;i=1001", "writable": True},
            {"name": "parts", "node": "ns=2;s=Oven1.PartCount", "writable": True},
            {"name": "nowhere", "node": "ns=2;s=Oven1.NoSuchNode"},
        ]
        self.bad, self.expected = "nowhere", {"setpoint": 180.0}
        self.write, self.unwritable = ("setpoint", 185.5, 185.5), ("parts", -1)  # UInt32

    async def stop(self) -> None:
        await self.proxy.close()
        await self.sim.stop()


class SerialLineRig(PtyRig):
    """The bundled weighing scale on a pty (poll mode), under a stable symlink: away = instrument stopped."""

    async def start(self, tmp_path: Path) -> None:
        self.device = SerialInstrument("scale", mode="poll", link=str(tmp_path / "scale"))
        await self.device.start()
        self.source = {
            "driver": "serial_line", "port": self.device.path, "mode": "poll", "command": r"P\r\n",
            "timeout": 1, "pattern": r"(?P<status>ST|US),GS,(?P<weight>[-+]\d+\.\d+)kg",
        }  # fmt: skip
        self.tags = [
            {"name": "weight_g", "group": "weight", "unit": "g", "scale": 1000},
            {"name": "stable", "group": "status", "type": "bool", "true_values": ["ST"], "false_values": ["US"]},
            {"name": "status_number", "group": "status"},  # "ST" is no number
        ]
        self.bad, self.expected = "status_number", {"weight_g": 12345.0, "stable": 1.0}


class FileRig(Rig):
    """A directory standing in for sysfs: away = the directory is renamed (as when it is unmounted)."""

    async def start(self, tmp_path: Path) -> None:
        self.dir, self.gone = tmp_path / "sys", tmp_path / "sys.unmounted"
        (self.dir / "thermal_zone0").mkdir(parents=True)
        (self.dir / "thermal_zone0" / "temp").write_text("45123\n")
        (self.dir / "brightness").write_text("0\n")
        self.source = {"driver": "file", "directory": str(self.dir)}
        self.tags = [
            {"name": "cpu_temp", "path": "thermal_zone0/temp", "scale": 0.001, "unit": "degC"},
            {"name": "led", "path": "brightness", "writable": True},
            {"name": "fan", "path": "fan1_input"},  # no such file
        ]
        self.bad, self.expected = "fan", {"cpu_temp": 45.123, "led": 0}
        self.write, self.unwritable = ("led", 200, 200), ("led", 2.5)  # an int file takes no fraction

    async def away(self) -> None:
        self.dir.rename(self.gone)

    async def back(self) -> None:
        self.gone.rename(self.dir)

    async def stop(self) -> None:
        pass


class OpcUaSubscribeRig(OpcUaRig):
    """The OPC UA PLC in ``mode: subscribe`` (monitored items), behind the TCP proxy."""

    async def start(self, tmp_path: Path) -> None:
        await super().start(tmp_path)
        self.source = {**self.source, "mode": "subscribe", "poll": "100ms"}


class SerialStreamRig(PtyRig):
    """The bundled temperature transmitter streaming 20 lines a second on a pty: away = instrument stopped."""

    async def start(self, tmp_path: Path) -> None:
        self.device = SerialInstrument("thermo", mode="stream", rate=20, link=str(tmp_path / "thermo"))
        await self.device.start()
        self.source = {
            "driver": "serial_line", "port": self.device.path, "mode": "stream", "timeout": 1,
            "max_silence": "1s", "pattern": r"T1=(?P<t1>[-+]\d+\.\d+);T2=(?P<t2>[-+]\d+\.\d+);(?P<status>OK|ER)",
        }  # fmt: skip
        self.tags = [
            {"name": "zone1", "group": "t1", "unit": "degC"},
            {"name": "zone2_f", "group": "t2", "unit": "degF", "scale": 1.8, "offset": 32},
            {"name": "status_number", "group": "status"},  # "OK" is no number
        ]
        self.bad, self.expected = "status_number", {"zone1": 23.45, "zone2_f": 67.64}


#: driver name -> its rig; every registered driver needs one
RIGS: dict[str, Callable[[], Rig]] = {
    "modbus_tcp": ModbusTcpRig,
    "modbus_rtu": ModbusRtuRig,
    "modbus_rtu_tcp": ModbusRtuTcpRig,
    "opcua": OpcUaRig,
    "serial_line": SerialLineRig,
    EXAMPLE: FileRig,
}


#: driver name -> a rig of its streaming mode, for the drivers that have one (``subscribe()``)
STREAM_RIGS: dict[str, Callable[[], Rig]] = {
    "opcua": OpcUaSubscribeRig,
    "serial_line": SerialStreamRig,
}


#: (driver, test) -> why it fails today; the suite marks those cases xfail, so they stay visible in every run.
#: Remove an entry when its driver is fixed.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def build(name: str, rig: Rig, state_dir: Path) -> Driver:
    """The driver of ``rig`` created from its config, validated by the driver's own models."""
    source_model, tag_model = models(name)
    source = source_model.model_validate(rig.source)
    tags = [tag_model.model_validate(t) for t in rig.tags]
    context = DriverContext(asset=f"conformance-{name}", state_dir=state_dir, meta=TagMeta.empty(len(tags)),
                            shared=Shared())  # fmt: skip
    return make_driver(name, source, tags, context)
