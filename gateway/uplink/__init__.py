"""Northbound uplinks: how the gateway's messages leave the box (MQTT today)."""

from gateway.uplink.mqtt import MqttUplink
from gateway.uplink.tls import UplinkConfigError, build_ssl_context

__all__ = ["MqttUplink", "UplinkConfigError", "build_ssl_context"]
