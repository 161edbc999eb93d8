"""YAML -> simulated instruments on ptys -> gateway -> real MQTT broker: both modes, end to end."""

from __future__ import annotations


from serial_helpers import scale_asset, thermo_asset
from e2e.harness import latest_values, running_gateway
from helpers import NAMESPACE, free_port, gateway_config

from simulators.serial_instrument import SerialInstrument

XOR = "checksum: {kind: xor8, separator: '*'}"


async def test_polled_scale_and_streaming_transmitter_arrive_on_mqtt(tmp_path, mqtt_broker, mqtt_subscriber) -> None:
    async with SerialInstrument("scale", checksum="xor8") as scale, \
            SerialInstrument("thermo", mode="stream", rate=20) as thermo:  # fmt: skip
        scale.weight = 7.5
        thermo.t1, thermo.t2 = 180.25, 100.0
        assets = scale_asset(scale.path, checksum=XOR) + thermo_asset(thermo.path)
        api_port = free_port()
        path = gateway_config(tmp_path, mqtt_port=mqtt_broker.port, api_port=api_port, assets_yaml=assets)
        sub = await mqtt_subscriber(f"{NAMESPACE}/#")
        async with running_gateway(path) as gw:
            got = await latest_values(sub, "scale-1", {"weight_g": 7500.0, "stable": True})
            assert got == {"weight_g": 7500.0, "stable": True}
            got = await latest_values(sub, "oven-probe", {"zone1": 180.25, "zone2_f": 212.0, "probe_ok": True,
                                                   "status_text": "OK"})
            assert got == {"zone1": 180.25, "zone2_f": 212.0, "probe_ok": True, "status_text": "OK"}
            scale.weight, thermo.t1 = 8.0, 181.5
            assert (await latest_values(sub, "scale-1", {"weight_g": 8000.0}))["weight_g"] == 8000.0
            assert (await latest_values(sub, "oven-probe", {"zone1": 181.5}))["zone1"] == 181.5
            detail = (await gw.api.get("/api/v1/assets/oven-probe")).json()
            assert detail["state"] == "connected" and detail["driver"] == "serial_line"
            assert detail["driver_counters"]["accepted"] > 0  # the driver's line counters on the status API
