"""A local MQTT broker for the demo, the benchmarks and the tests.

Mosquitto when its binary is installed (the real thing, as in production), else the embedded pure-Python
broker in :mod:`simulators.mqtt_broker`. ``stop()`` then ``start()`` brings it back on the same port, which
is how tests simulate a broker outage.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulators.mqtt_broker import EmbeddedBroker


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
    """A broker on ``host:port``; ``kind`` is "mosquitto" or "embedded" (default: Mosquitto when installed).

    ``workdir`` holds Mosquitto's config and log (a temporary folder by default); ``extra_conf`` is appended
    to its config (e.g. a TLS listener).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        kind: str | None = None,
        workdir: Path | None = None,
        extra_conf: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.binary = mosquitto_binary() if kind in (None, "mosquitto") else None
        if kind == "mosquitto" and self.binary is None:
            raise FileNotFoundError("no mosquitto binary on this machine (apt-get install mosquitto)")
        self.kind = "mosquitto" if self.binary else "embedded"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if not workdir:
            self._tmp = tempfile.TemporaryDirectory(prefix="iiot-broker-")
            workdir = Path(self._tmp.name)
        self.workdir = Path(workdir)
        self.log = self.workdir / "mosquitto.log"
        self.extra_conf = extra_conf
        self._proc: subprocess.Popen | None = None
        self._embedded: EmbeddedBroker | None = None

    def _conf(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            # started as root, Mosquitto drops to user "mosquitto", who may not read our folder
            f"user {getpass.getuser()}\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{self.extra_conf}"
        )
        return conf

    @property
    def running(self) -> bool:
        return (self._proc is not None and self._proc.poll() is None) or self._embedded is not None

    async def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        if not self.binary:
            from simulators.mqtt_broker import EmbeddedBroker

            self._embedded = EmbeddedBroker(self.host, self.port)
            await self._embedded.start()
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self._conf())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to us; we stop the broker after the gateway
        )
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(port_open, self.host, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                code = self._proc.poll()
                await self.stop()
                log = self.log.read_text()[-2000:] if self.log.exists() else ""
                raise RuntimeError(f"mosquitto did not start on {self.host}:{self.port} (exit {code}): {log}")
            await asyncio.sleep(0.05)

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
        if self._embedded is not None:
            emb, self._embedded = self._embedded, None
            await emb.stop()

    async def close(self) -> None:
        await self.stop(graceful=True)
        if self._tmp is not None:
            self._tmp.cleanup()
