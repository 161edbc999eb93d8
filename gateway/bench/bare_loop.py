"""The baseline of the end-to-end figure: a bare pymodbus read loop, run in its own process.

``python -m gateway.bench.bare_loop HOST PORT REGISTERS SECONDS`` reads ``REGISTERS`` holding registers
(in requests of 125) back to back for ``SECONDS`` after a one-second warm-up and prints
``{"reads": polls, "cpu_s": ..., "wall_s": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from pymodbus.client import AsyncModbusTcpClient


async def main(host: str, port: int, registers: int, seconds: float) -> dict:
    client = AsyncModbusTcpClient(host, port=port, retries=0)
    await client.connect()
    starts = list(range(0, registers, 125))

    async def poll() -> None:
        for s in starts:
            await client.read_holding_registers(s, count=min(125, registers - s), device_id=1)

    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        await poll()
    polls, cpu0, t0 = 0, time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        await poll()
        polls += 1
    result = {"reads": polls, "cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - t0}
    client.close()
    return result


if __name__ == "__main__":
    h, p, r, s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(asyncio.run(main(h, p, r, s))))
