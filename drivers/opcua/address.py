"""Resolving every tag of a source to a NodeId at connect: ``nsu=`` namespace URIs and browse paths.

A tag whose namespace URI the server does not have, or whose browse path leads nowhere, gets no NodeId;
it is reported bad on every read (with the reason), and the other tags are read as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from asyncua import Client, ua

from drivers.opcua import decode
from drivers.opcua.browsepath import translate_requests
from drivers.opcua.config import OpcUaTag
from drivers.opcua.nodeid import NodeRef

_FULL_MATCH = 0xFFFFFFFF  # RemainingPathIndex of a target reached by the whole path


def node_id_of(ref: NodeRef, index: int) -> ua.NodeId:
    """The ``ua.NodeId`` of a parsed node id whose namespace index is ``index``."""
    if ref.kind == "i":
        return ua.NodeId(ref.identifier, index, ua.NodeIdType.Numeric)
    kinds = {"s": ua.NodeIdType.String, "g": ua.NodeIdType.Guid, "b": ua.NodeIdType.ByteString}
    return ua.NodeId(ref.identifier, index, kinds[ref.kind])


@dataclass
class Resolution:
    """Per tag (plan order): its NodeId, or None with the positions and reason of the failures."""

    node_ids: list[ua.NodeId | None]
    failures: list[tuple[np.ndarray, int, str]] = field(default_factory=list)

    @property
    def resolved(self) -> np.ndarray:
        return np.array([i for i, n in enumerate(self.node_ids) if n is not None], dtype=np.intp)


def _plain(target: ua.ExpandedNodeId) -> ua.NodeId:
    return ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)


async def resolve(client: Client, tags: Sequence[OpcUaTag], namespaces: list[str], per_request: int) -> Resolution:
    """Resolve every tag; browse paths in TranslateBrowsePathsToNodeIds calls of ``per_request`` paths."""
    index = {uri: i for i, uri in enumerate(namespaces)}
    node_ids: list[ua.NodeId | None] = [None] * len(tags)
    missing_ns: list[int] = []
    missing_uris: list[str] = []
    path_pos: list[int] = []
    for pos, tag in enumerate(tags):
        ref = tag.node_ref
        if ref is None:
            path_pos.append(pos)
        elif isinstance(ref.namespace, int):
            node_ids[pos] = node_id_of(ref, ref.namespace)
        elif ref.namespace in index:
            node_ids[pos] = node_id_of(ref, index[ref.namespace])
        else:
            missing_ns.append(pos)
            if ref.namespace not in missing_uris:
                missing_uris.append(ref.namespace)
    res = Resolution(node_ids)
    if missing_ns:
        res.failures.append(
            (
                np.array(missing_ns, dtype=np.intp),
                decode.ERR_UNKNOWN_NAMESPACE,
                "namespace URI not in the server's NamespaceArray: " + ", ".join(missing_uris),
            )
        )
    if path_pos:
        paths = [tags[p].browse_path for p in path_pos]
        results: list[ua.BrowsePathResult] = []
        for chunk in translate_requests(paths, per_request):  # type: ignore[arg-type]
            answer = await client.uaclient.translate_browsepaths_to_nodeids(chunk)
            if len(answer) != len(chunk):
                raise ua.UaError(f"{len(answer)} results for {len(chunk)} browse paths")
            results.extend(answer)
        bad_pos: list[int] = []
        reasons: list[str] = []
        for pos, result in zip(path_pos, results):
            status = result.StatusCode.value if result.StatusCode is not None else 0
            full = [t for t in result.Targets if t.RemainingPathIndex == _FULL_MATCH]
            if status >> 30 == 0 and full:
                node_ids[pos] = _plain(full[0].TargetId)
            else:
                bad_pos.append(pos)
                why = decode.status_text(status) if status >> 30 else "no target"
                reasons.append(f"{tags[pos].path} ({why})")
        if bad_pos:
            res.failures.append(
                (
                    np.array(bad_pos, dtype=np.intp),
                    decode.ERR_BROWSE_PATH,
                    "browse path not found on the server: " + "; ".join(reasons),
                )
            )
    return res
