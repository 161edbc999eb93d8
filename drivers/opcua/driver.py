"""OPC UA driver: poll mode (one Read of every tag per poll) and subscribe mode (monitored items).

At ``connect()`` the driver opens a session as the source's config says (security policy and mode, the
gateway's own certificate, the server certificate checked against the trust folder, user identity; see
:mod:`drivers.opcua.session`), reads the server's NamespaceArray and operation limits in one Read,
resolves every tag to a NodeId (``nsu=`` namespace URIs, browse paths in batched
TranslateBrowsePathsToNodeIds calls; :mod:`drivers.opcua.address`) and builds the Read requests once.
``read()`` sends those prepared requests and decodes the answers into a :class:`~gateway.batch.Batch`
with NumPy. In subscribe mode (:class:`OpcUaSubscriber`) the engine iterates ``subscribe()`` instead.

Per-tag problems never fail the source: a node the server does not know comes back with
``BadNodeIdUnknown`` on that tag, a namespace URI the server does not have or a browse path that leads
nowhere marks that tag bad, the rest of the batch stands. Only a broken connection, a closed session,
a refused certificate or a timeout raises :class:`~gateway.driver.DeviceUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState

from drivers.opcua import address, decode, session, subscription
from drivers.opcua.frames import OpcUaCounters, count_bad_frames
from drivers.opcua.config import OpcUaSource, OpcUaTag
from gateway.batch import Batch
from gateway.driver import DeviceUnavailable, Driver, DriverContext, StreamingDriver

#: Used when the config does not set ``max_nodes_per_read`` and the server reports 0 (no limit) or nothing.
DEFAULT_MAX_NODES_PER_READ = 500

_NAMESPACE_ARRAY = ua.NodeId(ua.ObjectIds.Server_NamespaceArray, 0)
_MAX_NODES_PER_READ = ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead, 0)
_MAX_MONITORED_ITEMS = ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall, 0)
_MAX_TRANSLATE = ua.NodeId(
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds, 0
)

# asyncua (2.1) logs warnings when a session or channel is closed after the server has already dropped
# the socket. The driver closes exactly then, after each connection loss the engine has already reported,
# so these records carry no information; they are dropped, every other record passes.
_CLOSE_AFTER_LOSS = frozenset(
    {
        "close_session was called but connection is closed",
        "close_session but connection wasn't established",
        "close_secure_channel was called but connection is closed",
        "disconnect_socket was called but transport is None",
        # the publish loop's pending request fails with the connection; the subscription reports the loss
        "Publish iteration crashed; retrying in 1s",
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


class OpcUaDriver(Driver):
    """Polls the Value attribute of OPC UA variables. See :mod:`gateway.driver` for the contract.

    ``read()`` returns every tag in plan order (the order of ``tags``): numbers and booleans as float64
    with the tag's scale/offset applied, String/LocalizedText values in ``Batch.strings``; quality and
    error codes as described in :mod:`drivers.opcua.decode`. Called from one task only, never concurrently.

    ``mode: subscribe`` is :class:`OpcUaSubscriber`. ``state_dir`` (the gateway's ``gateway.state_dir``, from
    the context) holds the certificate store ``pki/`` of a secured source.
    """

    def __init__(self, source: OpcUaSource, tags: list[OpcUaTag], context: DriverContext) -> None:
        self.source = source
        self.tags = list(tags)
        self._scale = np.array([t.scale for t in self.tags], dtype=np.float64)
        self._offset = np.array([t.offset for t in self.tags], dtype=np.float64)
        self._client: Client | None = None
        self._requests: list[ua.ReadParameters] = []
        self._readable = np.empty(0, dtype=np.intp)
        self._failures: list[tuple[np.ndarray, int, str]] = []
        self._max_monitored = 0
        #: shown by the status API as ``driver_counters`` (undecodable messages from the server)
        self.stats = OpcUaCounters()
        self.float32_tags = context.meta.float32
        """Per tag: its value is an OPC UA Float, published at float32 precision. Learnt from the values
        read (the type is the server's, not the config's) and updated in place (:func:`decode.mark_types`)."""
        self.integer_tags = context.meta.integer
        """Per tag: its value is a Boolean or an integer type and the tag has no scale or offset: published as
        a JSON integer. Learnt from the values read, like ``float32_tags``."""
        self._unscaled = np.array([t.scale == 1 and t.offset == 0 for t in self.tags], dtype=bool)
        self.state_dir: Path = context.state_dir
        """Where the certificate store lives (``<state_dir>/pki``): the gateway's ``gateway.state_dir``."""
        self.node_ids: list[ua.NodeId | None] = []
        """Per tag (plan order) the NodeId it resolved to at connect; None when it did not resolve."""
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
        try:
            client = await session.open_session(self.source, session.pki_for(self.state_dir))
        except session.SessionError as exc:
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {exc}") from exc
        except (TimeoutError, OSError, ua.UaError) as exc:
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {_describe(exc)}") from exc
        self._client = client
        count_bad_frames(client, self.stats)
        try:
            namespaces, limits = await self._read_server_info(client)
            read_limit, monitored_limit, translate_limit = limits
            self.max_nodes_per_read = self.source.max_nodes_per_read or read_limit or DEFAULT_MAX_NODES_PER_READ
            resolution = await address.resolve(
                client, self.tags, namespaces, translate_limit or self.max_nodes_per_read
            )
        except BaseException as exc:
            await self.close()
            if isinstance(exc, (OSError, asyncio.TimeoutError, ua.UaError)):
                raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {_describe(exc)}") from exc
            raise
        self.namespaces = namespaces
        self._max_monitored = monitored_limit or self.max_nodes_per_read
        self._prepare(resolution)

    async def _read_server_info(self, client: Client) -> tuple[list[str], tuple[int, int, int]]:
        """The NamespaceArray and the limits MaxNodesPerRead, MaxMonitoredItemsPerCall and
        MaxNodesPerTranslateBrowsePathsToNodeIds (0 where the server sets none or does not say)."""
        nodes = [_NAMESPACE_ARRAY, _MAX_NODES_PER_READ, _MAX_MONITORED_ITEMS, _MAX_TRANSLATE]
        dvs = await client.uaclient.read(_read_params(nodes))
        if len(dvs) != len(nodes):
            raise ua.UaError(f"{len(dvs)} results for {len(nodes)} nodes read")
        ns_dv, *limit_dvs = dvs
        if ns_dv.StatusCode is not None:
            ns_dv.StatusCode.check()
        namespaces = [str(uri) for uri in (ns_dv.Value.Value or [])]
        limits = []
        for dv in limit_dvs:
            good = dv.StatusCode is None or dv.StatusCode.is_good()
            limit = dv.Value.Value if good and dv.Value is not None else None
            limits.append(limit if isinstance(limit, int) and limit > 0 else 0)
        return namespaces, (limits[0], limits[1], limits[2])

    def _prepare(self, resolution: address.Resolution) -> None:
        self.node_ids = resolution.node_ids
        self._readable = resolution.resolved
        self._failures = resolution.failures
        node_ids = [self.node_ids[i] for i in self._readable.tolist()]
        step = self.max_nodes_per_read
        self._requests = [_read_params(node_ids[i : i + step]) for i in range(0, len(node_ids), step)]

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
        except (TimeoutError, OSError, ua.UaError) as exc:
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {_describe(exc)}") from exc
        batch = Batch.empty(len(self.tags), now_ns)
        kind = decode.fill(batch, self._readable, results, now_ns)
        decode.mark_types(self.float32_tags, self.integer_tags, self._unscaled, self._readable, kind)
        for positions, code, text in self._failures:
            batch.mark_bad(positions, code, text)
        np.multiply(batch.values, self._scale, out=batch.values)
        np.add(batch.values, self._offset, out=batch.values)
        return batch

    async def write(self, tag: str, value: Any) -> Any:
        """Write engineering ``value`` to ``tag``'s Value attribute, read it back, return the read-back value.

        One Read of the node's DataType and Value first gives the type to write (the current Value's
        VariantType; for a Null value, the built-in DataType): ``raw = (value - offset) / scale`` must fit it
        (:mod:`gateway.writes` rules: whole numbers in range for integers, float32 range for Float, true/false
        for Boolean, text for String/LocalizedText). Then one Write, and one Read that must give the value
        written (Float compared at float32 precision). ``ValueError`` for a value the node cannot take
        (nothing sent); :class:`~gateway.driver.WriteError` when the server refuses (e.g. ``BadNotWritable``,
        ``BadUserAccessDenied``) or reads back another value; :class:`DeviceUnavailable` when the session is gone.
        """
        import math  # local imports: write() is the only method of this class that needs them

        from gateway.driver import WriteError
        from gateway.scaling import engineering, raw_bool, raw_float, raw_integer

        pos = next((i for i, t in enumerate(self.tags) if t.name == tag), None)
        if pos is None:
            raise ValueError(f"no tag {tag!r} on {self.source.endpoint}")
        cfg = self.tags[pos]
        client = self._client
        if client is None or client.uaclient.state is not UaClientState.CONNECTED:
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: not connected")
        node = self.node_ids[pos] if pos < len(self.node_ids) else None
        where = f"OPC UA server {self.source.endpoint}, node {cfg.node or cfg.path}"
        if node is None:
            raise WriteError(f"{where}: the node did not resolve at connect (see the tag's error)")
        ints = {
            ua.VariantType.SByte: (-(1 << 7), (1 << 7) - 1), ua.VariantType.Byte: (0, (1 << 8) - 1),
            ua.VariantType.Int16: (-(1 << 15), (1 << 15) - 1), ua.VariantType.UInt16: (0, (1 << 16) - 1),
            ua.VariantType.Int32: (-(1 << 31), (1 << 31) - 1), ua.VariantType.UInt32: (0, (1 << 32) - 1),
            ua.VariantType.Int64: (-(1 << 63), (1 << 63) - 1), ua.VariantType.UInt64: (0, (1 << 64) - 1),
        }  # fmt: skip
        try:
            params = _read_params([node])
            type_id = ua.ReadValueId()
            type_id.NodeId, type_id.AttributeId = node, ua.AttributeIds.DataType
            params.NodesToRead.append(type_id)
            current, data_type = await client.uaclient.read(params)
            variant = current.Value
            if current.StatusCode is not None and current.StatusCode.is_bad() and data_type.StatusCode is not None:
                data_type.StatusCode.check()  # e.g. BadNodeIdUnknown
            if variant is not None and variant.VariantType is not ua.VariantType.Null:
                if variant.is_array:
                    raise ValueError(f"tag {tag!r}: the node holds an array; only scalar values can be written")
                vtype = variant.VariantType
            else:
                type_node = data_type.Value.Value if data_type.Value is not None else None
                if not (isinstance(type_node, ua.NodeId) and type_node.NamespaceIndex == 0
                        and isinstance(type_node.Identifier, int) and 1 <= type_node.Identifier <= 25):
                    raise WriteError(f"{where}: cannot tell the data type to write (DataType {type_node})")
                vtype = ua.VariantType(type_node.Identifier)

            if vtype is ua.VariantType.Boolean:
                raw: Any = raw_bool(cfg, value, "Boolean")
            elif vtype in ints:
                raw = raw_integer(cfg, value, vtype.name, *ints[vtype])
            elif vtype in (ua.VariantType.Float, ua.VariantType.Double):
                raw = raw_float(cfg, value, vtype.name, 3.4028234663852886e38 if vtype is ua.VariantType.Float else math.inf)
            elif vtype in (ua.VariantType.String, ua.VariantType.LocalizedText):
                if not isinstance(value, str):
                    raise ValueError(f"tag {tag!r} is a {vtype.name}: write text, not {value!r}")
                raw = ua.LocalizedText(value) if vtype is ua.VariantType.LocalizedText else value
            else:
                raise ValueError(f"tag {tag!r}: writing {vtype.name} values is not supported")

            item = ua.WriteValue()
            item.NodeId, item.AttributeId = node, ua.AttributeIds.Value
            item.Value = ua.DataValue(ua.Variant(raw, vtype))
            write = ua.WriteParameters()
            write.NodesToWrite.append(item)
            (status,) = await client.uaclient.write(write)
            if not status.is_good():
                raise WriteError(f"{where} refused the write: {decode.status_text(status.value)}")
            (back,) = await client.uaclient.read(_read_params([node]))
        except (TimeoutError, OSError) as exc:
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {_describe(exc)}") from exc
        except ua.UaStatusCodeError as exc:
            if exc.code in (ua.StatusCodes.BadNodeIdUnknown, ua.StatusCodes.BadNodeIdInvalid,
                            ua.StatusCodes.BadAttributeIdInvalid):
                raise WriteError(f"{where}: {decode.status_text(exc.code)}") from exc
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {_describe(exc)}") from exc
        except ua.UaError as exc:
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {_describe(exc)}") from exc

        if back.StatusCode is not None and not back.StatusCode.is_good():
            raise WriteError(f"{where}: read-back failed: {decode.status_text(back.StatusCode.value)}")
        got = back.Value.Value if back.Value is not None else None
        if vtype is ua.VariantType.Float:
            same = isinstance(got, float) and np.float32(got) == np.float32(raw)
            got = float(str(np.float32(got))) if isinstance(got, float) else got
        elif vtype is ua.VariantType.LocalizedText:
            same, raw, got = isinstance(got, ua.LocalizedText) and got.Text == raw.Text, raw.Text, getattr(got, "Text", got)
        else:
            same = type(got) is type(raw) and got == raw
        if not same:
            raise WriteError(f"{where}: wrote {raw!r} but read back {got!r}")
        if isinstance(got, (bool, str)) or got is None:  # None: never equal to a value written
            return got
        return engineering(cfg, got)

    def counters(self) -> dict[str, int]:
        return self.stats.as_dict()

    # -- close ---------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the session and stop asyncua's background tasks; never raises, also after the server died."""
        client, self._client = self._client, None
        if client is None:
            return
        await session.close_quietly(client, self.source.timeout)



class OpcUaSubscriber(OpcUaDriver, StreamingDriver):
    """``mode: subscribe``: the gateway iterates :meth:`subscribe` instead of polling ``read()``.

    Writes may run while the subscription waits (``writes_during_stream``): OPC UA multiplexes requests on one
    secure channel by request handle, so a Write and the Publish responses of the subscription do not mix up.
    """

    writes_during_stream: ClassVar[bool] = True

    async def subscribe(self) -> AsyncIterator[Batch]:
        """Subscribe mode: create the subscription and one monitored item per resolved tag, yield one full
        :meth:`read` (so nothing is missed across a reconnect), then a Batch (with ``index``) per data
        change notification — several when a burst reports a tag more than once.

        Raises :class:`DeviceUnavailable` when the connection or the subscription dies (socket closed,
        asyncua's keepalive probe failing, a StatusChangeNotification from the server, no publish response
        within three keepalive periods); the engine then reconnects and calls ``subscribe()`` again.
        """
        client = self._client
        if client is None or client.uaclient.state is not UaClientState.CONNECTED:
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: not connected")
        inbox = subscription.NotificationInbox()
        timing = subscription.timing(self.source)
        try:
            created = await client.uaclient.create_subscription(subscription.subscription_params(timing), inbox.callback)
            positions = self._readable.tolist()
            requests = [
                subscription.item_request(p, self.node_ids[p], self.tags[p], self.source) for p in positions
            ]
            params = ua.CreateMonitoredItemsParameters()
            params.SubscriptionId = created.SubscriptionId
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            results: list[ua.MonitoredItemCreateResult] = []
            for i in range(0, len(requests), self._max_monitored):
                params.ItemsToCreate = requests[i : i + self._max_monitored]
                results.extend(await client.uaclient.create_monitored_items(params))
        except (TimeoutError, OSError, ua.UaError) as exc:
            raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {_describe(exc)}") from exc
        refused = [
            (pos, result.StatusCode.value)
            for pos, result in zip(positions, results)
            if result.StatusCode is not None and result.StatusCode.value >> 31
        ]
        if refused:  # those tags stay bad until the next connect
            self._failures.append((
                np.array([pos for pos, _ in refused], dtype=np.intp),
                decode.ERR_NOT_MONITORED,
                subscription.refused_text([(self.tags[pos], status) for pos, status in refused]),
            ))
        yield await self.read()
        keepalive_s = created.RevisedPublishingInterval / 1000.0 * max(1, created.RevisedMaxKeepAliveCount)
        deadline = 3 * keepalive_s + self.source.timeout
        while True:
            try:
                items = await inbox.get(deadline)
            except subscription.SubscriptionLost as exc:
                raise DeviceUnavailable(f"OPC UA server {self.source.endpoint}: {exc}") from exc
            if items is None:
                raise DeviceUnavailable(
                    f"OPC UA server {self.source.endpoint}: no publish response or keepalive for {deadline:.1f} s"
                )
            for batch in subscription.to_batches(items, self._scale, self._offset, self.float32_tags,
                                                 self.integer_tags, self._unscaled):
                yield batch


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        return decode.status_text(exc.code)
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer (timeout)"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
