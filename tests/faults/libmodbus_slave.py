"""Build and run ``libmodbus_slave.c``: a Modbus slave on libmodbus, a stack the gateway's authors did not write.

:func:`slave_binary` compiles it once per session with gcc against the libmodbus headers. Where gcc or
libmodbus-dev is missing the tests that need it are skipped, except under ``CI=true``, where they fail
(``.ci/run`` installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from simulators.pty_pair import PtyPair

SOURCE = Path(__file__).with_name("libmodbus_slave.c")


def slave_binary(tmp_dir: Path) -> Path:
    """The compiled slave (built into ``tmp_dir``); skips, or fails under CI, when it cannot be built."""
    gcc = shutil.which("gcc")
    header = Path("/usr/include/modbus/modbus.h")
    problem = None
    if gcc is None:
        problem = "gcc is not installed"
    elif not header.exists():
        problem = "libmodbus headers are missing (apt-get install libmodbus-dev)"
    else:
        out = tmp_dir / "libmodbus_slave"
        run = subprocess.run(
            [gcc, "-O1", "-Wall", "-o", str(out), str(SOURCE), "-I/usr/include/modbus", "-lmodbus"],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode == 0:
            return out
        problem = f"cannot compile {SOURCE.name}: {run.stderr.strip()}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"libmodbus test slave needed under CI: {problem}")
    pytest.skip(problem)


async def start_slave(binary: Path, *args: str) -> asyncio.subprocess.Process:
    """Run the slave (``rtu <device> <unit>`` or ``tcp <port> <unit>``) and wait for its "ready" line."""
    proc = await asyncio.create_subprocess_exec(
        str(binary), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        line = await proc.stdout.readline()
    if line.strip() != b"ready":
        err = await proc.stderr.read() if proc.stderr else b""
        raise RuntimeError(f"libmodbus slave did not start: {line!r} {err!r}")
    return proc


async def stop_slave(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await proc.wait()


class PtyRelay:
    """Two pty pairs joined like a null-modem cable: the gateway opens ``path``, the slave ``far_path``."""

    def __init__(self) -> None:
        self.near, self.far = PtyPair(), PtyPair()
        self.path, self.far_path = self.near.path, self.far.path
        loop = asyncio.get_running_loop()
        loop.add_reader(self.near.master_fd, self._copy, self.near.master_fd, self.far.master_fd)
        loop.add_reader(self.far.master_fd, self._copy, self.far.master_fd, self.near.master_fd)

    @staticmethod
    def _copy(src: int, dst: int) -> None:
        with contextlib.suppress(OSError):
            data = os.read(src, 4096)
            os.write(dst, data)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for pair in (self.near, self.far):
            loop.remove_reader(pair.master_fd)
            pair.close()
