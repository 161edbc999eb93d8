"""OPC UA driver, polling mode: every tag of a source in one Read service call per poll.

At ``connect()`` the driver opens a session (security mode None; user name and password when set),
reads the server's NamespaceArray and OperationLimits/MaxNodesPerRead in one Read, resolves every
``nsu=`` node id to its namespace index and builds the Read requests once. ``read()`` then sends those
prepared requests (one, or several when there are more tags than MaxNodesPerRead) and decodes the
answers into a :class:`~gateway.batch.Batch` with NumPy.

Per-tag problems never fail the source: a node the server does not know comes back with
``BadNodeIdUnknown`` on that tag, a namespace URI the server does not have marks that tag bad, the rest
of the batch stands. Only a broken connection, a closed session or a timeout raises
:class:`~gateway.driver.DeviceUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState

from drivers.opcua import decode
from drivers.opcua.config import OpcUaSource, OpcUaTag
from drivers.opcua.nodeid import NodeRef
from gateway.batch import Batch
from gateway.driver import DeviceUnavailable

#: Used when the config does not set ``max_nodes_per_read`` and the server reports 0 (no limit) or nothing.
DEFAULT_MAX_NODES_PER_READ = 500

_NAMESPACE_ARRAY = ua.NodeId(ua.ObjectIds.Server_NamespaceArray, 0)
_MAX_NODES_PER_READ = ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead, 0)
# asyncua's supervisor task reads ServerStatus/State every "watchdog interval" with that interval as its
# timeout, and declares the connection lost when it fails. The polls already prove the session alive, so
# the probe is kept infrequent and never stricter than the source's own timeout.
_WATCHDOG_MIN_S = 5.0

# asyncua (2.1) logs warnings when a session or channel is closed after the server has already dropped
# the socket. The driver closes exactly then, after each connection loss the engine has already reported,
# so these records carry no information; they are dropped, every other record passes.
_CLOSE_AFTER_LOSS = frozenset(
    {
        "close_session was called but connection is closed",
        "close_session but connection wasn't established",
        "close_secure_channel was called but connection is closed",
        "disconnect_socket was called but transport is None",
    }
)


class _DropCloseAfterLoss(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _CLOSE_AFTER_LOSS


for _name in (
    "asyncua.client.ua_session.UaSession",
    "asyncua.client.ua_client.UaClient",
    "asyncua.client.ua_client.UASocketProtocol",
):
    logging.getLogger(_name).addFilter(_DropCloseAfterLoss())


def _read_params(node_ids: Sequence[ua.NodeId]) -> ua.ReadParameters:
    params = ua.ReadParameters()
    params.MaxAge = 0
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    for node_id in node_ids:
        rv = ua.ReadValueId()
        rv.NodeId = node_id
        rv.AttributeId = ua.AttributeIds.Value
        params.NodesToRead.append(rv)
    return params


def _node_id(ref: NodeRef, index: int) -> ua.NodeId:
    if ref.kind == "i":
        return ua.NodeId(ref.identifier, index, ua.NodeIdType.Numeric)
    kinds = {"s": ua.NodeIdType.String, "g": ua.NodeIdType.Guid, "b": ua.NodeIdType.ByteString}
    return ua.NodeId(ref.identifier, index, kinds[ref.kind])


class OpcUaDriver:
    """Polls the Value attribute of OPC UA variables. See :mod:`gateway.driver` for the contract.

    ``read()`` returns every tag in plan order (the order of ``tags``): numbers and booleans as float64
    with the tag's scale/offset applied, String/LocalizedText values in ``Batch.strings``; quality and
    error codes as described in :mod:`drivers.opcua.decode`. Called from one task only, never concurrently.
    """

    name: ClassVar[str] = "opcua"
    SourceConfig: ClassVar[type[OpcUaSource]] = OpcUaSource
    TagConfig: ClassVar[type[OpcUaTag]] = OpcUaTag

    def __init__(self, source: OpcUaSource, tags: list[OpcUaTag]) -> None:
        self.source = source
        self.tags = list(tags)
        self._refs = [t.node_ref for t in self.tags]
        self._scale = np.array([t.scale for t in self.tags], dtype=np.float64)
        self._offset = np.array([t.offset for t in self.tags], dtype=np.float64)
        self._client: Client | None = None
        self._requests: list[ua.ReadParameters] = []
        self._readable = np.empty(0, dtype=np.intp)
        self._unresolved = np.empty(0, dtype=np.intp)
        self._unresolved_text = ""
        self.max_nodes_per_read = 0
        """Nodes per Read request in use (after connect): the config override, else the server's limit."""
        self.namespaces: list[str] = []
        """The server's NamespaceArray as read at connect."""

    # -- connect -------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the session, resolve namespaces and prepare the Read requests.

        Raises :class:`DeviceUnavailable` when the server cannot be reached, refuses the session
        (e.g. ``BadUserAccessDenied``) or does not answer within ``source.timeout``.
        """
        await self.close()
        client = Client(
            self.source.endpoint,
            timeout=self.source.timeout,
            watchdog_intervall=max(_WATCHDOG_MIN_S, self.source.timeout),
        )
        client.name = client.description = "iiot-gateway"
        client.application_uri = "urn:iiot-gateway:client"
        client.session_timeout = int(self.source.session_timeout * 1000)
        if self.source.username is not None:
            client.set_user(self.source.username)
            if self.source.password is not None:
                client.set_password(self.source.password.get_secret_value())
        self._client = client
        try:
            await client.connect()
            namespaces, server_limit = await self._read_server_info(client)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, (OSError, asyncio.TimeoutError, ua.UaError)):
                raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {_describe(exc)}") from exc
            raise
        self.namespaces = namespaces
        self.max_nodes_per_read = self.source.max_nodes_per_read or server_limit or DEFAULT_MAX_NODES_PER_READ
        self._prepare(namespaces)

    async def _read_server_info(self, client: Client) -> tuple[list[str], int]:
        dvs = await client.uaclient.read(_read_params([_NAMESPACE_ARRAY, _MAX_NODES_PER_READ]))
        if len(dvs) != 2:
            raise ua.UaError(f"{len(dvs)} results for 2 nodes read")
        ns_dv, limit_dv = dvs
        if ns_dv.StatusCode is not None:
            ns_dv.StatusCode.check()
        namespaces = [str(uri) for uri in (ns_dv.Value.Value or [])]
        good = limit_dv.StatusCode is None or limit_dv.StatusCode.is_good()
        limit = limit_dv.Value.Value if good else None
        return namespaces, limit if isinstance(limit, int) and limit > 0 else 0

    def _prepare(self, namespaces: list[str]) -> None:
        index = {uri: i for i, uri in enumerate(namespaces)}
        readable: list[int] = []
        node_ids: list[ua.NodeId] = []
        unresolved: list[int] = []
        missing: list[str] = []
        for pos, ref in enumerate(self._refs):
            if isinstance(ref.namespace, int):
                ns = ref.namespace
            elif ref.namespace in index:
                ns = index[ref.namespace]
            else:
                unresolved.append(pos)
                if ref.namespace not in missing:
                    missing.append(ref.namespace)
                continue
            readable.append(pos)
            node_ids.append(_node_id(ref, ns))
        step = self.max_nodes_per_read
        self._requests = [_read_params(node_ids[i : i + step]) for i in range(0, len(node_ids), step)]
        self._readable = np.array(readable, dtype=np.intp)
        self._unresolved = np.array(unresolved, dtype=np.intp)
        self._unresolved_text = (
            "namespace URI not in the server's NamespaceArray: " + ", ".join(missing) if missing else ""
        )

    # -- read ----------------------------------------------------------------------------------------------

    async def read(self) -> Batch:
        """Read the Value of every tag; a :class:`Batch` of all tags in plan order (scale/offset applied)."""
        client = self._client
        if client is None or client.uaclient.state is not UaClientState.CONNECTED:
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: not connected")
        now_ns = time.time_ns()
        results: list[ua.DataValue] = []
        try:
            for params in self._requests:
                dvs = await client.uaclient.read(params)
                if len(dvs) != len(params.NodesToRead):
                    raise DeviceUnavailable(
                        f"OPC UA server {self.source.endpoint}: {len(dvs)} results for "
                        f"{len(params.NodesToRead)} nodes read"
                    )
                results.extend(dvs)
        except (OSError, asyncio.TimeoutError, ua.UaError) as exc:
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {_describe(exc)}") from exc
        batch = Batch.empty(len(self.tags), now_ns)
        decode.fill(batch, self._readable, results, now_ns)
        if len(self._unresolved):
            batch.mark_bad(self._unresolved, decode.ERR_UNKNOWN_NAMESPACE, self._unresolved_text)
        np.multiply(batch.values, self._scale, out=batch.values)
        np.add(batch.values, self._offset, out=batch.values)
        return batch

    async def write(self, tag: str, value: Any) -> None:
        """Write-back is not implemented yet (issue 3)."""
        raise NotImplementedError("OPC UA write-back is not implemented yet")

    # -- close ---------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the session and stop asyncua's background tasks; never raises, also after the server died."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(self.source.timeout):
                await client.disconnect()
        except Exception:
            with contextlib.suppress(Exception):
                client.disconnect_socket()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        return decode.status_text(exc.code)
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer (timeout)"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
