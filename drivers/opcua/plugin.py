"""The OPC UA driver as the registry sees it: config models at import, asyncua only when a source is built.

asyncua takes about half a second and 27 MiB to import; ``iiot-gateway validate`` and a gateway with no
OPC UA source need neither.
"""

from __future__ import annotations

from typing import Any, ClassVar

from drivers.opcua.config import OpcUaSource, OpcUaTag


class OpcUaDriver:
    """Registry entry of ``driver: opcua``; constructing it returns the real :class:`drivers.opcua.driver.OpcUaDriver`."""

    name: ClassVar[str] = "opcua"
    SourceConfig: ClassVar[type[OpcUaSource]] = OpcUaSource
    TagConfig: ClassVar[type[OpcUaTag]] = OpcUaTag

    def __new__(cls, source: OpcUaSource, tags: list[OpcUaTag]) -> Any:  # type: ignore[misc]
        from drivers.opcua.driver import OpcUaDriver as Driver

        return Driver(source, tags)
