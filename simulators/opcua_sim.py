"""An OPC UA PLC serving the plant's ``opcua`` node map with asyncua's :class:`~asyncua.Server`.

The plant file's namespace (``urn:acme:oven``) is registered first, so it has index 2. Variables get the
configured node ids in that namespace (``ns=2;s=Oven1.Zone1.Temperature``, ``ns=2;i=1001``) and live under
object nodes named by the dotted prefix of their string id (``Oven1`` -> ``Oven1.Zone1``), or by ``parent``.
Values are written on change, with source and server timestamps. By default: security policy None,
anonymous access, no certificate. With ``security=`` (:class:`~simulators.opcua_security.SimulatorSecurity`)
it serves only Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss (Sign and SignAndEncrypt)
with its own certificate, accepts only client certificates in its trust folder, and users by name and
password or certificate. Start-up costs the ~1 s asyncua needs to build its standard address space.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Node, Server, ua

from simulators.config import OpcUaNode, OpcUaSection
from simulators.opcua_security import SECURE_POLICIES, SimulatorSecurity, SimulatorUsers
from simulators.plant import Plant
from simulators.signals import Value

log = logging.getLogger(__name__)

_INT_RANGES = {
    "SByte": (-(1 << 7), (1 << 7) - 1), "Byte": (0, (1 << 8) - 1),
    "Int16": (-(1 << 15), (1 << 15) - 1), "UInt16": (0, (1 << 16) - 1),
    "Int32": (-(1 << 31), (1 << 31) - 1), "UInt32": (0, (1 << 32) - 1),
    "Int64": (-(1 << 63), (1 << 63) - 1), "UInt64": (0, (1 << 64) - 1),
}  # fmt: skip
_DEFAULTS: dict[str, Value] = {"Boolean": False, "String": "", "Float": 0.0, "Double": 0.0}


def convert(type_: str, value: Value, *, strict: bool = False) -> Any:
    """A plant value as the Python value of OPC UA built-in type ``type_``.

    Integers out of range wrap (two's complement) unless ``strict`` (``ValueError``).
    """
    if type_ == "Boolean":
        return bool(value)
    if type_ == "String":
        return str(value)
    if isinstance(value, str):
        raise ValueError(f"{value!r} is text; a {type_} needs a number")
    if type_ in ("Float", "Double"):
        return float(value)
    number = int(round(value))
    low, high = _INT_RANGES[type_]
    if not low <= number <= high:
        if strict:
            raise ValueError(f"{value!r} is outside the {type_} range {low}..{high}")
        span = high - low + 1
        number = (number - low) % span + low
    return number


@dataclass(eq=False)
class _Var:
    cfg: OpcUaNode
    node_id: ua.NodeId
    variant_type: ua.VariantType
    last: Any = field(default=None)


class OpcUaSimulator:
    """An OPC UA PLC: ``await start()``, ``await stop()`` (restartable), ``set(name, value)``.

    ``plant`` is a :class:`Plant`, a plant file path, or ``None`` for the bundled plant. ``clock=False`` stops
    the server from updating ``Server/ServerStatus/CurrentTime`` every second, which makes ``stop()`` about
    1 s faster (asyncua waits for that task's sleep).
    """

    def __init__(
        self,
        plant: Plant | str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 4840,
        *,
        clock: bool = True,
        security: SimulatorSecurity | None = None,
    ) -> None:
        self.plant = plant if isinstance(plant, Plant) else Plant.load(plant)
        self.clock = clock
        self.security = security
        self.section = self.plant.config.opcua or OpcUaSection()
        self.host, self.port = host, port
        self._vars: dict[str, _Var] = {}
        self._overrides: dict[str, Value] = {}
        self._server: Server | None = None
        self._flush: asyncio.Task[None] | None = None
        self.namespace_index: int | None = None

    @property
    def endpoint(self) -> str:
        """``opc.tcp://host:port/`` — what a client connects to."""
        return f"opc.tcp://{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the address space and listen; raises ``OSError`` when the port cannot be bound."""
        if self._server is not None:
            return
        sec = self.security
        server = Server(user_manager=SimulatorUsers(sec) if sec else None)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.disable_clock(not self.clock)
        server.set_server_name("iiot-gateway OPC UA simulator")
        if sec is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            server.set_identity_tokens([ua.AnonymousIdentityToken])
            await server.set_application_uri("urn:iiot-gateway:simulator:opcua")
        else:
            await asyncio.to_thread(sec.ensure_certificate)
            await server.load_certificate(str(sec.cert_file))
            await server.load_private_key(str(sec.key_file))
            server.set_security_policy(SECURE_POLICIES)
            tokens = [ua.UserNameIdentityToken, ua.X509IdentityToken]
            server.set_identity_tokens([ua.AnonymousIdentityToken, *tokens] if sec.allow_anonymous else tokens)
            server.set_certificate_validator(sec.validate_client)
            await server.set_application_uri(sec.application_uri)
        self.namespace_index = await server.register_namespace(self.section.namespace)
        await self._build(server)
        try:
            await server.start()
        except OSError as exc:  # asyncua has stopped its internal server already
            msg = f"OPC UA simulator cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            raise OSError(exc.errno, msg) from exc
        self._server = server
        await self._apply(self.plant.values)
        self.plant.attach(self._apply)
        log.info(
            "OPC UA simulator listening on %s (namespace %s = ns=%d)",
            self.endpoint,
            self.section.namespace,
            self.namespace_index,
        )

    async def stop(self) -> None:
        """Stop serving and close every session and the listening socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        await self.plant.detach(self._apply)
        if self._flush is not None:
            task, self._flush = self._flush, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.stop()
        log.info("OPC UA simulator on %s stopped", self.endpoint)

    async def __aenter__(self) -> OpcUaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _build(self, server: Server) -> None:
        idx = self.namespace_index
        assert idx is not None
        folders: dict[str, Node] = {"": server.nodes.objects}

        async def folder(path: str) -> Node:
            if path not in folders:
                parent_path, _, leaf = path.rpartition(".")
                parent = await folder(parent_path)
                folders[path] = await parent.add_object(ua.NodeId(path, idx), ua.QualifiedName(leaf, idx))
            return folders[path]

        self._vars = {}
        for cfg in self.section.nodes:
            if cfg.id.startswith("i="):
                node_id = ua.NodeId(int(cfg.id[2:]), idx)
                parent_path, leaf = cfg.parent or "", cfg.name
            else:
                sid = cfg.id.removeprefix("s=")
                node_id = ua.NodeId(sid, idx)
                parent_path, _, leaf = sid.rpartition(".")
                parent_path = cfg.parent if cfg.parent is not None else parent_path
            vtype = ua.VariantType[cfg.type]
            var = _Var(cfg, node_id, vtype)
            initial = ua.Variant(convert(cfg.type, self._value(var, self.plant.values)), vtype)
            node = await (await folder(parent_path)).add_variable(
                node_id, ua.QualifiedName(cfg.browse_name or leaf, idx), initial, varianttype=vtype
            )
            if cfg.writable:
                await node.set_writable()
            self._vars[cfg.name] = var

    # -- values ---------------------------------------------------------------------------------------------

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.section.nodes]

    def node_id(self, name: str) -> str:
        """The node id string of variable ``name``, e.g. ``ns=2;s=Oven1.Zone1.Temperature``."""
        cfg = next((n for n in self.section.nodes if n.name == name), None)
        if cfg is None:
            raise KeyError(f"unknown node {name!r}; known: {', '.join(self.node_names)}")
        ns = self.namespace_index if self.namespace_index is not None else 2
        return f"ns={ns};{cfg.id}" if cfg.id.startswith(("i=", "s=")) else f"ns={ns};s={cfg.id}"

    def set(self, name: str, value: Value) -> None:
        """Pin variable ``name`` at ``value`` until :meth:`release`; clients see it from the next loop turn.

        A plant output name that is not a node name overrides the plant output instead. Raises ``KeyError``
        for unknown names and ``ValueError`` for values the node's type cannot hold.
        """
        cfg = next((n for n in self.section.nodes if n.name == name), None)
        if cfg is None:
            for bound in self.section.nodes:
                if bound.signal == name:
                    convert(bound.type, value, strict=True)  # refuse before the plant takes it
            self.plant.set(name, value)
        else:
            convert(cfg.type, value, strict=True)
            self._overrides[name] = value
        self._schedule_flush()

    def release(self, name: str) -> None:
        """Undo :meth:`set`."""
        if any(n.name == name for n in self.section.nodes):
            self._overrides.pop(name, None)
        else:
            self.plant.release(name)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._server is None or (self._flush is not None and not self._flush.done()):
            return
        self._flush = asyncio.get_running_loop().create_task(self._apply_current(), name="opcua-sim-set")

    async def _apply_current(self) -> None:
        await self._apply(self.plant.values)

    def _value(self, var: _Var, values: Mapping[str, Value]) -> Value:
        name = var.cfg.name
        if name in self._overrides:
            return self._overrides[name]
        if var.cfg.signal is not None:
            return values[var.cfg.signal]
        return var.cfg.value if var.cfg.value is not None else _DEFAULTS.get(var.cfg.type, 0)

    async def _apply(self, values: Mapping[str, Value]) -> None:
        server = self._server
        if server is None:
            return
        now = datetime.now(UTC)
        for var in self._vars.values():
            value = self._value(var, values)
            if var.last is not None and type(var.last) is type(value) and var.last == value:
                continue
            variant = ua.Variant(convert(var.cfg.type, value), var.variant_type)
            await server.write_attribute_value(
                var.node_id, ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
            )
            var.last = value
