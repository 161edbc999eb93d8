"""Figures that need the real parts: the bundled Modbus simulator, a broker, the gateway in its own process
(so its CPU and memory are its own, read from /proc), and an MQTT subscriber in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from gateway.encoders import decode
from gateway.encoders.json import expand
from gateway.ringbuffer import RingBuffer
from gateway.spool import Spool, SpoolRecord, encode_record
from gateway.uplink.links import publish_size
from simulators.config import PlantConfig
from simulators.local_broker import LocalBroker
from simulators.modbus_sim import ModbusSimulator
from simulators.plant import Plant

NS = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plant(n_float32: int, n_int16: int = 0) -> Plant:
    """A PLC with ``n_float32`` float32 points (hr 0..) and ``n_int16`` int16 points after them, plus ``probe``."""
    points: list[dict[str, Any]] = [
        {"name": f"f{i}", "address": f"hr:{2 * i}", "type": "float32", "signal": f"s{i % 4}"} for i in range(n_float32)
    ]
    base = 2 * n_float32
    points += [{"name": f"i{i}", "address": f"hr:{base + i}", "type": "int16", "signal": f"w{i % 8}", "scale": 0.1}
               for i in range(n_int16)]
    points.append({"name": "probe", "address": f"hr:{base + n_int16}", "type": "uint16", "value": 0})
    signals = {f"s{k}": {"kind": "sine", "min": 0, "max": 100, "period": f"{7 + k}s"} for k in range(4)}
    signals |= {f"w{k}": {"kind": "random_walk", "start": 50, "step": 0.5, "min": 0, "max": 100} for k in range(8)}
    cfg = PlantConfig.model_validate({"seed": 1, "update_interval": "100ms", "signals": signals,
                                      "modbus": {"points": points}})
    return Plant(cfg)


def listen(port: int, on_message: Any) -> mqtt.Client:
    """A paho client on its own network thread, subscribed to every data topic of the bench's gateway."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(f"{NS}/+/data/#", qos=0)
    client.loop_start()
    return client


class Subscriber:
    """Counts samples and records arrival times of data messages (paho's network thread)."""

    def __init__(self, port: int) -> None:
        self.samples = 0
        self.messages = 0
        self.bytes = 0
        self.wire_bytes = 0  # PUBLISH packets as the gateway sent them with QoS 1
        self.probe: list[tuple[float, Any, int]] = []  # (arrival, value, sample ts ms)
        self.lock = threading.Lock()
        self.client = listen(port, self._on_message)

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        body = expand(decode(msg.payload, msg.topic))
        n = 0
        for name, entry in body["tags"].items():
            n += len(entry["raw"]["v"]) if "raw" in entry else 1
            if name == "probe":
                with self.lock:
                    self.probe.append((now, entry["v"], entry["ts"]))
        with self.lock:
            self.samples += n
            self.messages += 1
            self.bytes += len(msg.payload)
            self.wire_bytes += publish_size(msg.topic, len(msg.payload), 1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def gateway_config(mqtt_port: int, modbus_port: int | None, assets: list[dict[str, Any]], publish: float,
                   compression: str = "none", *, buffer_seconds: float = 30, api_port: int | None = None,
                   payload: str = "full", qos: int = 0, sparkplug: bool = False) -> str:
    """A gateway config (JSON is YAML); sources without a ``driver`` are Modbus TCP on ``modbus_port``."""
    fmt = {"format": "sparkplug", "group_id": "bench"} if sparkplug else {"payload": payload}
    cfg = {"gateway": {"id": "bench-gw", "namespace": NS, "log_level": "warning"},
           "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "publish_interval": publish, "qos": qos,
                    "compression": compression, "max_queued": 100000, **fmt},
           "api": {"enabled": False} if api_port is None else {"listen": f"127.0.0.1:{api_port}"},
           "buffer": {"seconds": buffer_seconds}, "assets": assets}
    for a in assets:
        if "driver" not in a["source"]:
            a["source"] |= {"driver": "modbus_tcp", "host": "127.0.0.1", "port": modbus_port, "unit": 1}
    return json.dumps(cfg)


class SparkplugSubscriber(Subscriber):
    """Counts the metrics of DDATA messages (one sample each) and their PUBLISH bytes (QoS 0, as sent)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.client.subscribe("spBv1.0/bench/DDATA/#", qos=0)

    def _on_message(self, client, userdata, msg) -> None:
        if "/DDATA/" not in msg.topic:
            return
        from gateway.encoders.sparkplug_b_pb2 import Payload

        p = Payload()
        p.ParseFromString(msg.payload)
        with self.lock:
            self.samples += len(p.metrics)
            self.messages += 1
            self.bytes += len(msg.payload)
            self.wire_bytes += publish_size(msg.topic, len(msg.payload), 0)


class GatewayProcess:
    """``iiot-gateway run`` in a child process; CPU seconds and peak RSS from /proc."""

    def __init__(self, config_text: str, prepare_state=None) -> None:
        """``prepare_state(state_dir)``, when given, fills the state directory before the gateway starts."""
        self._dir = tempfile.TemporaryDirectory(prefix="iiot-bench-")
        path = Path(self._dir.name) / "gateway.yaml"
        cfg = json.loads(config_text)
        cfg["gateway"]["state_dir"] = str(Path(self._dir.name) / "state")  # its own spool, never the user's
        path.write_text(json.dumps(cfg))
        if prepare_state is not None:
            prepare_state(Path(cfg["gateway"]["state_dir"]))
        self.started = time.monotonic()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p])
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", str(path), "--log-level", "warning"],
                                     env=env, stdin=subprocess.DEVNULL)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _status_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return float("nan")

    def peak_rss_mb(self) -> float:
        return self._status_mb("VmHWM:")

    def rss_mb(self) -> float:
        return self._status_mb("VmRSS:")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()


async def _wait(pred, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise RuntimeError("the gateway sent no data in time (see its log above)")
        await asyncio.sleep(0.05)


async def run_live(quick: bool, parts: frozenset[str] | None = None) -> dict[str, Any]:
    """The figures that need a broker, the simulators and the gateway process (those in ``parts``, else all)."""
    steps = {"payload": _payload_bytes, "end_to_end": _end_to_end, "latency": _latency, "scale": _scale,
             "startup": _startup_full_spool}
    wanted = [name for name in steps if parts is None or name in parts]
    if not wanted:
        return {}
    broker = LocalBroker(port=free_port())
    await broker.start()
    try:
        return {name: await steps[name](broker.port, quick) for name in wanted}
    finally:
        await broker.stop()


async def _end_to_end(mqtt_port: int, quick: bool) -> dict[str, Any]:
    """The gateway with ``max_in_flight`` 1 (the default) and 4 (every request of a poll in one write), then
    the bare pymodbus loop, on the same simulator."""
    n_tags, seconds = 200, (5.0 if quick else 20.0)
    registers = 2 * n_tags
    sim = ModbusSimulator(plant(n_tags), port=free_port())
    await sim.start()
    runs: dict[int, tuple[float, float]] = {}  # max_in_flight -> (tags/s, CPU-s per million)
    try:
        tags = [{"name": f"f{i}", "address": f"hr:{2 * i}", "type": "float32", "mode": "raw"} for i in range(n_tags)]
        for in_flight in (1, 4):
            source = {"poll": 0.001, "max_in_flight": in_flight}
            cfg = gateway_config(mqtt_port, sim.port, [{"id": "fast", "source": source, "tags": tags}], 0.5)
            gw = GatewayProcess(cfg)
            sub = Subscriber(mqtt_port)
            try:
                await _wait(lambda: sub.samples > 0, 20)
                await asyncio.sleep(1.0)
                s0, c0, t0 = sub.samples, gw.cpu_s(), time.monotonic()
                await asyncio.sleep(seconds)
                s1, c1, t1 = sub.samples, gw.cpu_s(), time.monotonic()
            finally:
                sub.close()
                gw.stop()
            runs[in_flight] = ((s1 - s0) / (t1 - t0), (c1 - c0) / max(s1 - s0, 1) * 1e6)
        bare = await _bare_loop(sim.port, registers, seconds)
    finally:
        await sim.stop()
    gw_rate, gw_cpu_per_m = runs[4]
    one_rate, one_cpu_per_m = runs[1]
    bare_samples = bare["reads"] * n_tags
    bare_rate = bare_samples / bare["wall_s"]
    bare_cpu_per_m = bare["cpu_s"] / max(bare_samples, 1) * 1e6
    return {
        "workload": f"{n_tags} float32 tags ({registers} registers, {-(-registers // 125)} requests per poll), "
                    "poll as fast as the simulator answers, mode raw (every sample delivered); the gateway "
                    "figures with max_in_flight 4, the one_in_flight ones with the default 1",
        "gateway_tags_per_s": round(gw_rate),
        "bare_pymodbus_tags_per_s": round(bare_rate),
        "throughput_ratio": round(gw_rate / bare_rate, 3),
        "gateway_cpu_s_per_million": round(gw_cpu_per_m, 2),
        "bare_cpu_s_per_million": round(bare_cpu_per_m, 2),
        "cpu_ratio": round(gw_cpu_per_m / bare_cpu_per_m, 3),
        "one_in_flight_tags_per_s": round(one_rate),
        "one_in_flight_cpu_s_per_million": round(one_cpu_per_m, 2),
    }


async def _payload_bytes(mqtt_port: int, quick: bool) -> dict[str, Any]:
    """Wire bytes per sample of each payload shape on the north-side workload: 1000 holding registers (int16,
    8 requests of 125) polled every 100 ms, every value changing, a message per poll, QoS 1."""
    n_regs, seconds = 1000, (3.0 if quick else 10.0)
    sim = ModbusSimulator(plant(0, n_int16=n_regs), port=free_port())
    await sim.start()
    out: dict[str, Any] = {"workload": f"{n_regs} int16 holding registers, poll 100 ms, all changing, QoS 1, "
                                       "publish after every poll"}
    try:
        tags = [{"name": f"r{i}", "address": f"hr:{i}", "type": "int16"} for i in range(n_regs)]
        for label, shape, comp in (("full", "full", "none"), ("compact", "compact", "none"),
                                   ("compact_zstd", "compact", "zstd"), ("full_zstd", "full", "zstd"),
                                   ("sparkplug", None, "none")):
            cfg = gateway_config(mqtt_port, sim.port, [{"id": "line", "source": {"poll": 0.1}, "tags": tags}], 0.1,
                                 comp, payload=shape or "full", qos=1, sparkplug=shape is None)
            gw = GatewayProcess(cfg)
            sub = SparkplugSubscriber(mqtt_port) if shape is None else Subscriber(mqtt_port)
            try:
                await _wait(lambda: sub.samples > 0, 20)
                await asyncio.sleep(1.0)
                s0, b0 = sub.samples, sub.wire_bytes
                await asyncio.sleep(seconds)
                s1, b1 = sub.samples, sub.wire_bytes
            finally:
                sub.close()
                gw.stop()
            out[f"{label}_bytes_per_sample"] = round((b1 - b0) / max(s1 - s0, 1), 2)
    finally:
        await sim.stop()
    return out


async def _bare_loop(port: int, registers: int, seconds: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.bench.bare_loop", "127.0.0.1", str(port), str(registers), str(seconds),
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    out, _ = await proc.communicate()
    return json.loads(out)


def _gateway_status(api_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/v1/gateway", timeout=5) as r:
        return json.loads(r.read())


async def _probe_changes(mqtt_port: int, cfg: str, set_probe, changes: int, api_port: int) -> dict[str, Any]:
    """Change ``probe`` ``changes`` times at random moments; time each change to its arrival at the subscriber."""
    gw = GatewayProcess(cfg)
    sub = Subscriber(mqtt_port)
    e2e, internal = [], []
    rng = np.random.default_rng(3)
    try:
        await _wait(lambda: bool(sub.probe), 30)
        for k in range(1, changes + 1):
            await asyncio.sleep(float(rng.uniform(0.05, 0.2)))
            t_set = time.time()
            set_probe(k)
            await _wait(lambda k=k: any(v == k for _, v, _ in sub.probe[-3:]), 5)
            arrival, _, ts_ms = next(p for p in reversed(sub.probe) if p[1] == k)
            e2e.append(arrival - t_set)
            internal.append(arrival - ts_ms / 1000)
        status = await asyncio.to_thread(_gateway_status, api_port)
    finally:
        sub.close()
        gw.stop()
    ms = lambda xs, q: round(float(np.percentile(xs, q)) * 1000, 1)  # noqa: E731
    return {"changes": changes, "e2e_p50_ms": ms(e2e, 50), "e2e_p99_ms": ms(e2e, 99),
            "read_to_subscriber_p50_ms": ms(internal, 50), "read_to_subscriber_p99_ms": ms(internal, 99),
            "read_to_uplink_p50_ms": status["publish_latency_ms"].get("p50"),
            "read_to_uplink_p99_ms": status["publish_latency_ms"].get("p99")}


async def _latency(mqtt_port: int, quick: bool) -> dict[str, Any]:
    """Poll mode (Modbus TCP, poll 100 ms) and OPC UA subscription mode; ``publish_interval`` 100 ms, so
    each asset is published right after each poll / notification (see gateway.engine)."""
    poll = 0.1
    changes = 15 if quick else 100
    sim = ModbusSimulator(plant(4), port=free_port())
    await sim.start()
    try:
        tags = [{"name": "probe", "address": "hr:8", "type": "uint16"}]
        api = free_port()
        cfg = gateway_config(mqtt_port, sim.port, [{"id": "lat", "source": {"poll": poll}, "tags": tags}], poll,
                             api_port=api)
        poll_mode = await _probe_changes(mqtt_port, cfg, lambda k: sim.set("probe", k), changes, api)
    finally:
        await sim.stop()
    opc = await _opcua_latency(mqtt_port, poll, 10 if quick else changes)
    return {
        "poll_mode": {"poll_s": poll, "publish_interval_s": poll, **poll_mode},
        "opcua_subscribe_mode": opc,
    }


async def _opcua_latency(mqtt_port: int, publishing: float, changes: int) -> dict[str, Any]:
    # asyncua is heavy: only this figure needs it
    from simulators.opcua_sim import OpcUaSimulator

    cfg = PlantConfig.model_validate({"seed": 1, "signals": {}, "opcua": {
        "nodes": [{"name": "probe", "id": "Bench.Probe", "type": "Int32", "value": 0}]}})
    sim = OpcUaSimulator(Plant(cfg), port=free_port(), clock=False)
    await sim.start()
    try:
        source = {"driver": "opcua", "endpoint": sim.endpoint, "mode": "subscribe", "poll": publishing,
                  "sampling_interval": 0, "timeout": 5}
        tags = [{"name": "probe", "node": sim.node_id("probe")}]
        api = free_port()
        gcfg = gateway_config(mqtt_port, None, [{"id": "opc", "source": source, "tags": tags}], publishing,
                              api_port=api)
        result = await _probe_changes(mqtt_port, gcfg, lambda k: sim.set("probe", k), changes, api)
    finally:
        await sim.stop()
    return {"publishing_interval_s": publishing, "sampling_interval_s": 0, "publish_interval_s": publishing,
            **result}


async def _scale(mqtt_port: int, quick: bool) -> dict[str, Any]:
    """50 devices x 200 tags at 1 s with the default ``buffer.seconds`` (600): CPU share, start-up time, peak
    RSS with the rings and beyond them, and the peak projected for full rings.

    Ring memory becomes resident as slots are first written (slot-major storage: a poll writes one row), so
    the RSS beyond the rings at any moment is VmRSS minus the ring bytes written by then (the share of the
    ``buffer.seconds`` that has run since the first message, times ``RingBuffer.nbytes``); VmRSS is sampled
    every 50 ms from the start of the process, so the config-loading peak is included.
    """
    devices, per, buffer_s = 50, 200, 600.0
    seconds = 6.0 if quick else 60.0
    ring_mb = devices * RingBuffer.for_rate(per, buffer_s, 1.0).nbytes / 2**20  # as the gateway sizes them
    sim = ModbusSimulator(plant(0, per), port=free_port())
    await sim.start()
    beyond = [0.0]  # peak of VmRSS - rings written
    first: list[float] = []

    async def sample_rss(gw: GatewayProcess) -> None:
        while True:
            try:
                rss = gw.rss_mb()
            except OSError:
                return
            written = min(1.0, (time.monotonic() - first[0]) / buffer_s) if first else 0.0
            beyond[0] = max(beyond[0], rss - ring_mb * written)
            await asyncio.sleep(0.05)

    try:
        tags = [{"name": f"i{i}", "address": f"hr:{i}", "type": "int16", "scale": 0.1} for i in range(per)]
        assets = [{"id": f"dev{d}", "source": {"poll": 1.0, "timeout": 5}, "tags": tags} for d in range(devices)]
        gw = GatewayProcess(gateway_config(mqtt_port, sim.port, assets, 1.0, buffer_seconds=buffer_s))
        sampler = asyncio.create_task(sample_rss(gw))
        sub = Subscriber(mqtt_port)
        started = gw.started
        try:
            await _wait(lambda: sub.messages > 0, 30)
            first.append(time.monotonic())
            startup = first[0] - started
            await _wait(lambda: sub.messages >= devices, 30)
            await asyncio.sleep(2.0)
            c0, t0 = gw.cpu_s(), time.monotonic()
            await asyncio.sleep(seconds)
            c1, t1 = gw.cpu_s(), time.monotonic()
            rss = gw.peak_rss_mb()
            written = min(1.0, (time.monotonic() - started) / buffer_s)  # share of the ring slots written
        finally:
            sampler.cancel()
            sub.close()
            gw.stop()
    finally:
        await sim.stop()
    return {"devices": devices, "tags": devices * per, "poll_s": 1.0, "buffer_seconds": buffer_s,
            "seconds": seconds, "cpu_share_of_one_core": round((c1 - c0) / (t1 - t0), 4),
            "startup_to_first_message_s": round(startup, 2),
            "peak_rss_mb": round(rss, 1), "ring_mb": round(ring_mb, 1),
            "rss_beyond_rings_mb": round(beyond[0], 1),
            "peak_rss_mb_rings_full": round(rss + ring_mb * (1 - written), 1),
            "rss_units": "MiB (VmHWM / 1024; beyond rings: peak of VmRSS sampled every 50 ms minus the ring "
                         "bytes written by then)"}


SPOOL_BYTES = 256 * 2**20


def fill_spool(directory: Path, total: int = SPOOL_BYTES, payload_bytes: int = 8192) -> dict[str, int]:
    """Fill ``directory`` (an uplink's ``backlog``) with messages up to ``total`` bytes held, with the gateway's
    own :class:`Spool` (so its segments, index and head are what a gateway that lost its link leaves)."""
    spool = Spool(directory, max_bytes=total)
    spool.open()
    rng = np.random.default_rng(5)
    body = rng.integers(32, 127, payload_bytes, dtype=np.uint8).tobytes()  # incompressible-ish text
    seq, created = spool.last_seq, time.time_ns()
    try:
        while True:
            batch = [SpoolRecord(seq=seq + k + 1, topic=f"{NS}/bench-gw/data/spooled", payload=body, samples=100,
                                 created_ns=created, qos=1) for k in range(256)]
            size = len(encode_record(batch[0]))
            n = min(len(batch), (total - spool.bytes) // size)
            if n <= 0:
                break
            spool.append(batch[:n])
            seq += n
    finally:
        spool.close()
    return {"messages": spool.messages, "bytes": spool.bytes}


class FirstMessage:
    """Arrival time (monotonic) of the first data message, of the first live one and of the first replayed one
    (from the spool filled before the start)."""

    def __init__(self, port: int) -> None:
        self.first: float | None = None
        self.first_live: float | None = None
        self.first_replayed: float | None = None
        self.messages = 0
        self.client = listen(port, self._on_message)

    def _on_message(self, client, userdata, msg) -> None:
        now = time.monotonic()
        self.messages += 1
        if self.first is None:
            self.first = now
        if msg.topic.endswith("/spooled"):
            if self.first_replayed is None:
                self.first_replayed = now
        elif self.first_live is None:
            self.first_live = now

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _startup_full_spool(mqtt_port: int, quick: bool) -> dict[str, Any]:
    """Time from ``iiot-gateway run`` to the first data message at a subscriber while the uplink's spool holds
    256 MiB of messages from before the restart (``<state_dir>/spool/mqtt/backlog``), one Modbus asset."""
    sim = ModbusSimulator(plant(4), port=free_port())
    await sim.start()
    held: dict[str, int] = {}

    def prepare(state: Path) -> None:
        held.update(fill_spool(state / "spool" / "mqtt" / "backlog"))

    try:
        tags = [{"name": "probe", "address": "hr:8", "type": "uint16"}]
        cfg = gateway_config(mqtt_port, sim.port, [{"id": "live", "source": {"poll": 0.1}, "tags": tags}], 0.1,
                             qos=1)
        # the same gateway with an empty spool first: what the spool adds to the start-up
        empty = FirstMessage(mqtt_port)
        try:
            gw = GatewayProcess(cfg)
            try:
                await _wait(lambda: empty.first is not None, 60)
            finally:
                gw.stop()
            assert empty.first is not None  # _wait returned
            empty_s = empty.first - gw.started
        finally:
            empty.close()
        sub = FirstMessage(mqtt_port)
        try:
            t_fill = time.monotonic()
            gw = GatewayProcess(cfg, prepare_state=prepare)
            fill_s = gw.started - t_fill
            try:
                await _wait(lambda: sub.first_live is not None and sub.first_replayed is not None, 60)
            finally:
                gw.stop()
        finally:
            sub.close()
    finally:
        await sim.stop()
    assert sub.first is not None and sub.first_live is not None and sub.first_replayed is not None  # _wait returned
    return {"spool_mib": round(held["bytes"] / 2**20, 1), "spool_messages": held["messages"],
            "fill_s": round(fill_s, 2), "empty_spool_to_first_message_s": round(empty_s, 2),
            "full_spool_to_first_message_s": round(sub.first - gw.started, 2),
            "full_spool_to_first_live_message_s": round(sub.first_live - gw.started, 2),
            "full_spool_to_first_replayed_message_s": round(sub.first_replayed - gw.started, 2)}
