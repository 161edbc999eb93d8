"""A local MQTT broker for the demo, the benchmarks and the tests.

Mosquitto when its binary is installed (the real thing, as in production), else the embedded pure-Python
broker in :mod:`simulators.mqtt_broker`. ``stop()`` then ``start()`` brings it back on the same port, which
is how tests simulate a broker outage.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class LocalBroker:
    """Start/stop a broker on ``host:port``; ``kind`` is "mosquitto" or "embedded"."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, prefer_embedded: bool = False) -> None:
        self.host = host
        self.port = port
        self.binary = None if prefer_embedded else mosquitto_binary()
        self.kind = "mosquitto" if self.binary else "embedded"
        self._proc: subprocess.Popen | None = None
        self._embedded = None
        self._dir = tempfile.TemporaryDirectory(prefix="iiot-broker-")

    def _conf(self) -> Path:
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        return conf

    async def start(self, timeout: float = 10.0) -> None:
        if self.binary:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self._conf())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C goes to us; we stop the broker after the gateway
            )
            deadline = time.monotonic() + timeout
            while not port_open(self.host, self.port):
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                    raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {err.strip()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout} s")
                await asyncio.sleep(0.05)
        else:
            from simulators.mqtt_broker import EmbeddedBroker

            self._embedded = EmbeddedBroker(self.host, self.port)
            await self._embedded.start()

    async def stop(self, *, graceful: bool = False) -> None:
        """Stop the broker; by default abruptly (SIGKILL), like a crash or a pulled cable would."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 3.0)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
            if proc.stderr:
                proc.stderr.close()
        if self._embedded is not None:
            emb, self._embedded = self._embedded, None
            await emb.stop()

    async def close(self) -> None:
        await self.stop(graceful=True)
        self._dir.cleanup()
