"""iiot-gateway: the daemon (config, engine, ring buffers, reducers, uplink, status API)."""

__version__ = "0.1.0"
