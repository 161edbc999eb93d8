"""Every ``iiot-gateway`` command builds the whole CLI parser; building it must not import the simulators
(``simulate``'s serial-instrument options once brought the RTU and TCP simulators, pymodbus's server side
and the plant model into ``iiot-gateway run``: 30 MiB and 0.3 s of start-up on a PC)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("simulators.modbus_sim", "simulators.modbus_rtu_sim", "simulators.plant", "pymodbus")


def test_building_the_cli_imports_no_simulator() -> None:
    code = ("import sys; from gateway.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_instruments_modbus_crc_checksum_is_still_crc16_modbus() -> None:
    from simulators.serial_instrument import CHECKSUMS

    fn, width = CHECKSUMS["crc16_modbus"]
    assert (fn(b"123456789"), width) == (0x4B37, 4)  # the CRC-16/MODBUS check value
