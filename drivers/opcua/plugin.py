"""The OPC UA driver as the registry sees it: config models at import, asyncua only when a source is built.

asyncua takes about half a second and 27 MiB to import; ``iiot-gateway validate`` and a gateway with no
OPC UA source need neither.
"""

from __future__ import annotations

from drivers.opcua.config import OpcUaSource, OpcUaTag
from gateway.driver import Driver, DriverContext, DriverSpec


def create(source: OpcUaSource, tags: list[OpcUaTag], context: DriverContext) -> Driver:
    """A polling driver, or for ``mode: subscribe`` a streaming one (asyncua is imported here, at first use)."""
    from drivers.opcua.driver import OpcUaDriver, OpcUaSubscriber

    return (OpcUaSubscriber if source.mode == "subscribe" else OpcUaDriver)(source, tags, context)


SPEC = DriverSpec("opcua", OpcUaSource, OpcUaTag, create)
