"""OPC UA subscription mode: monitored-item requests, and data-change notifications turned into Batches.

One subscription per source; one monitored item per tag whose ``ClientHandle`` is the tag's plan
position, so a notification maps to the plan without a lookup table. Publish responses arrive through
asyncua's publish loop into :class:`NotificationInbox`, a bounded queue the driver's ``subscribe()``
drains. A response is decoded into batches with NumPy (:func:`to_batches`); a burst that reports one tag
several times (queue_size > 1) becomes several batches, each naming a tag at most once, in order.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from asyncua import ua

from drivers.opcua import decode
from drivers.opcua.config import OpcUaSource, OpcUaTag
from gateway.batch import Batch

#: The server closes an idle subscription's keepalive after about this long without changes.
KEEPALIVE_S = 5.0
#: Default queue size never exceeds this (sampling much faster than publishing).
MAX_DEFAULT_QUEUE = 1000
#: Publish responses held for the driver before it is declared behind (then the source reconnects).
INBOX_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Timing:
    """Requested subscription timing, in milliseconds (the server may revise it)."""

    publishing_ms: float
    keepalive_count: int
    lifetime_count: int


def timing(source: OpcUaSource) -> Timing:
    publishing = source.publishing_interval or source.poll
    keepalive = max(1, math.ceil(KEEPALIVE_S / publishing))
    return Timing(publishing * 1000.0, keepalive, keepalive * 6)


def subscription_params(t: Timing) -> ua.CreateSubscriptionParameters:
    params = ua.CreateSubscriptionParameters()
    params.RequestedPublishingInterval = t.publishing_ms
    params.RequestedMaxKeepAliveCount = t.keepalive_count
    params.RequestedLifetimeCount = t.lifetime_count
    params.MaxNotificationsPerPublish = 0  # no limit
    params.PublishingEnabled = True
    params.Priority = 0
    return params


def item_request(pos: int, node_id: ua.NodeId, tag: OpcUaTag, source: OpcUaSource) -> ua.MonitoredItemCreateRequest:
    """The monitored item of the tag at plan position ``pos``: sampling interval, queue size, deadband."""
    publishing = source.publishing_interval or source.poll
    sampling = tag.sampling_interval if tag.sampling_interval is not None else source.sampling_interval
    if sampling is None:
        sampling = publishing
    queue = tag.queue_size or min(MAX_DEFAULT_QUEUE, max(1, math.ceil(publishing / max(sampling, 0.001))))
    rv = ua.ReadValueId()
    rv.NodeId = node_id
    rv.AttributeId = ua.AttributeIds.Value
    mp = ua.MonitoringParameters()
    mp.ClientHandle = pos
    mp.SamplingInterval = sampling * 1000.0
    mp.QueueSize = queue
    mp.DiscardOldest = True
    if tag.server_deadband > 0:
        flt = ua.DataChangeFilter()
        flt.Trigger = ua.DataChangeTrigger.StatusValue
        flt.DeadbandType = (
            ua.DeadbandType.Percent if tag.server_deadband_type == "percent" else ua.DeadbandType.Absolute
        )
        flt.DeadbandValue = float(tag.server_deadband)
        mp.Filter = flt
    req = ua.MonitoredItemCreateRequest()
    req.ItemToMonitor = rv
    req.MonitoringMode = ua.MonitoringMode.Reporting
    req.RequestedParameters = mp
    return req


def refused_text(refused: Sequence[tuple[OpcUaTag, int]]) -> str:
    """Why the server would not monitor some tags (tag, status code), for their error text."""
    parts = []
    for tag, status in refused:
        why = decode.status_text(status)
        if tag.server_deadband > 0 and tag.server_deadband_type == "percent":
            why += ", a percent server_deadband needs an EURange property on the variable"
        parts.append(f"{tag.name} ({why})")
    return "the server refused to monitor: " + "; ".join(parts)


class SubscriptionLost(Exception):
    """The server ended the subscription or the session died (status in the message)."""


class NotificationInbox:
    """Receives publish results from asyncua's publish loop (``callback``); ``get()`` hands them out.

    Bounded: when the driver falls more than :data:`INBOX_SIZE` responses behind, ``get()`` raises
    :class:`SubscriptionLost` so the source reconnects (and re-reads everything) instead of silently
    dropping changes. A StatusChangeNotification (subscription timed out, server shut down, or
    asyncua's supervisor reporting the connection lost) also ends it.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[list[ua.MonitoredItemNotification]] = asyncio.Queue(INBOX_SIZE)
        self._ended: str | None = None
        self._wake = asyncio.Event()

    def callback(self, result: ua.PublishResult) -> None:
        for notif in result.NotificationMessage.NotificationData or []:
            if isinstance(notif, ua.DataChangeNotification):
                if notif.MonitoredItems:
                    try:
                        self._queue.put_nowait(notif.MonitoredItems)
                    except asyncio.QueueFull:
                        self.end(f"the gateway fell more than {INBOX_SIZE} publish responses behind")
            elif isinstance(notif, ua.StatusChangeNotification):
                status = notif.Status.value if notif.Status is not None else 0
                self.end(f"subscription ended by {decode.status_text(status)}")
        self._wake.set()

    def end(self, why: str) -> None:
        if self._ended is None:
            self._ended = why
        self._wake.set()

    async def get(self, timeout: float) -> list[ua.MonitoredItemNotification] | None:
        """The next data changes; None when ``timeout`` passes without any (keepalives included)."""
        while True:
            if not self._queue.empty():
                return self._queue.get_nowait()
            if self._ended is not None:
                raise SubscriptionLost(self._ended)
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return None


def split_bursts(handles: np.ndarray) -> list[np.ndarray]:
    """Indices into ``handles`` grouped so that no group names a handle twice, each in arrival order:
    group k holds the k-th report of every tag."""
    n = len(handles)
    order = np.argsort(handles, kind="stable")
    ordered = handles[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n) - first
    if n == 0 or rank.max() == 0:
        return [np.arange(n)]
    return [np.flatnonzero(rank == k) for k in range(int(rank.max()) + 1)]


def to_batches(
    items: Sequence[ua.MonitoredItemNotification],
    scale: np.ndarray,
    offset: np.ndarray,
    float32: np.ndarray | None = None,
    integer: np.ndarray | None = None,
    unscaled: np.ndarray | None = None,
) -> list[Batch]:
    """Batches (with ``index``) of one DataChangeNotification; scale/offset applied, as in a poll.

    ``Batch.strings`` is keyed by position in the batch, as :meth:`RingBuffer.write` reads it. ``float32``
    (the driver's ``float32_tags``, and ``integer`` its ``integer_tags``) are updated from the values' types
    (:func:`decode.mark_types`)."""
    now_ns = time.time_ns()
    handles = np.fromiter((it.ClientHandle for it in items), dtype=np.intp, count=len(items))
    batches = []
    for sel in split_bursts(handles):
        index = handles[sel]
        dvs = [items[i].Value for i in sel.tolist()]
        batch = Batch.empty(len(sel), now_ns)
        kind = decode.fill(batch, np.arange(len(sel)), dvs, now_ns)
        if float32 is not None:
            decode.mark_types(float32, integer, unscaled, index, kind)
        batch.values *= scale[index]
        batch.values += offset[index]
        batch.index = index
        batches.append(batch)
    return batches
