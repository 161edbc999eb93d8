"""An in-test OPC UA server (asyncua) with an oven in namespace ``urn:acme:oven`` (index 2).

Started on a free port on 127.0.0.1, anonymous or user ``operator`` / ``s3cret``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from helpers import free_port

OVEN_NS = "urn:acme:oven"
GUID = uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a")
SOURCE_TS = datetime(2025, 11, 25, 20, 40, 0, 123456, tzinfo=timezone.utc)

# node id (string form; namespace index 2 is urn:acme:oven) -> initial value
NODES: dict[str, ua.Variant] = {
    "ns=2;s=Oven1.Zone1.Temperature": ua.Variant(182.5, ua.VariantType.Double),
    "ns=2;s=Oven1.DoorOpen": ua.Variant(True, ua.VariantType.Boolean),
    "ns=2;s=Oven1.Setpoint": ua.Variant(180.25, ua.VariantType.Float),
    "ns=2;i=1001": ua.Variant(-7, ua.VariantType.Int16),
    "ns=2;i=1002": ua.Variant(4_000_000_000, ua.VariantType.UInt32),
    "ns=2;i=1003": ua.Variant(-(2**40), ua.VariantType.Int64),
    "ns=2;i=1004": ua.Variant(200, ua.VariantType.Byte),
    f"ns=2;g={GUID}": ua.Variant(12345, ua.VariantType.UInt32),
    "ns=2;b=AQJvdmVu": ua.Variant(42.0, ua.VariantType.Double),
    "ns=2;s=Oven1.Recipe": ua.Variant("PLA-200", ua.VariantType.String),
    "ns=2;s=Oven1.Mode": ua.Variant(ua.LocalizedText("Heating", "en"), ua.VariantType.LocalizedText),
    "ns=2;s=Oven1.Profile": ua.Variant([1.0, 2.0, 3.0], ua.VariantType.Double),
    "ns=2;s=Oven1.StartedAt": ua.Variant(SOURCE_TS, ua.VariantType.DateTime),
    "ns=2;s=Oven1.Quality": ua.Variant(1.0, ua.VariantType.Double),
}


class _Users:
    """Anonymous sessions are allowed; a named user must be operator / s3cret."""

    def get_user(self, iserver, username=None, password=None, certificate=None):  # noqa: ANN001
        if username is None:
            return User(role=UserRole.User)
        if username == "operator" and password == "s3cret":
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class OvenServer:
    server: Server
    endpoint: str

    def node(self, text: str) -> ua.NodeId:
        return ua.NodeId.from_string(text)

    async def write(self, text: str, dv: ua.DataValue) -> None:
        await self.server.write_attribute_value(self.node(text), dv)


async def start_oven_server() -> OvenServer:
    port = free_port()
    server = Server(user_manager=_Users())
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(OVEN_NS)
    assert idx == 2
    oven = await server.nodes.objects.add_object(ua.NodeId("Oven1", idx), "Oven1")
    for text, variant in NODES.items():
        nid = ua.NodeId.from_string(text)
        await oven.add_variable(nid, f"{idx}:{text}", variant)
    await server.start()
    return OvenServer(server, f"opc.tcp://127.0.0.1:{port}/")
