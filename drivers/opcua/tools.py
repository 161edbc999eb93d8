"""``iiot-gateway browse`` and ``iiot-gateway trust``: OPC UA discovery and the certificate trust folder.

``browse`` prints the address space below Objects as YAML an integrator pastes under ``tags:``: every
variable as ``- {name: ..., node: "nsu=<namespace uri>;s=..."}`` with its data type, ``writable`` when the
server lets this user write it, and its browse path in a comment; every object (folder) as a comment line.
Node ids are printed in the ``nsu=`` form (namespace URI, not index), so the pasted config survives a
server that renumbers its namespaces. Levels are browsed breadth-first, one Browse call (and one Read of
the data types and access levels) per level.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua
from pydantic import ValidationError

from drivers.opcua.config import OpcUaSource
from drivers.opcua.pki import CertificateError
from drivers.opcua.session import SessionError, close_quietly, open_session, pki_for

_MASK = ua.NodeClass.Object | ua.NodeClass.Variable
_CURRENT_WRITE = 1 << ua.AccessLevel.CurrentWrite.value
_NAMESPACE_ARRAY = ua.NodeId(ua.ObjectIds.Server_NamespaceArray, 0)


@dataclass(frozen=True, slots=True)
class Row:
    """One node found by :func:`browse_tree`. ``data_type`` and ``writable`` (the server's UserAccessLevel
    has CurrentWrite) are for variables only."""

    level: int
    path: list[str]
    node_id: ua.NodeId
    node_class: int
    data_type: str = ""
    writable: bool = False


def _source(args: argparse.Namespace) -> OpcUaSource:
    policy, _, mode = args.security.partition("/")
    fields = {
        "driver": "opcua",
        "endpoint": args.endpoint,
        "security_policy": policy,
        "allow_insecure": args.allow_insecure,
        "timeout": args.timeout,
    }
    if mode:
        fields["security_mode"] = mode
    if args.username:
        fields["username"] = args.username
        if args.password_env:
            fields["password"] = os.environ.get(args.password_env, "")
    return OpcUaSource(**fields)


def _type_name(node_id: ua.NodeId) -> str:
    if node_id.NamespaceIndex == 0 and isinstance(node_id.Identifier, int):
        return ua.ObjectIdNames.get(node_id.Identifier, node_id.to_string())
    return node_id.to_string()


def _tag_name(path: list[str]) -> str:
    name = "_".join(p.split(":", 1)[-1] for p in path[-2:])
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.-") or "tag"


def _escape(name: str) -> str:
    return name.replace("&", "&&").replace("/", "&/").replace(":", "&:")


async def read_namespaces(client) -> list[str]:
    """The server's NamespaceArray (index -> URI)."""
    rp = ua.ReadParameters()
    rv = ua.ReadValueId()
    rv.NodeId = _NAMESPACE_ARRAY
    rv.AttributeId = ua.AttributeIds.Value
    rp.NodesToRead.append(rv)
    (dv,) = await client.uaclient.read(rp)
    ok = dv.StatusCode is None or dv.StatusCode.is_good()
    return [str(uri) for uri in (dv.Value.Value or [])] if ok and dv.Value is not None else []


def node_text(node_id: ua.NodeId, namespaces: list[str]) -> str:
    """``nsu=<uri>;s=...`` for a node outside namespace 0 whose URI is known, else asyncua's ``ns=`` form."""
    text = node_id.to_string()
    ns = node_id.NamespaceIndex
    if ns == 0 or ns >= len(namespaces) or not namespaces[ns] or ";" in namespaces[ns]:
        return text
    return f"nsu={namespaces[ns]};{text.split(';', 1)[1]}"


async def _variable_info(client, variables: list[ua.NodeId]) -> dict[ua.NodeId, tuple[str, bool]]:
    """DataType name and whether this user may write it, per variable: one Read of two attributes each."""
    rp = ua.ReadParameters()
    for nid in variables:
        for attribute in (ua.AttributeIds.DataType, ua.AttributeIds.UserAccessLevel):
            rv = ua.ReadValueId()
            rv.NodeId = nid
            rv.AttributeId = attribute
            rp.NodesToRead.append(rv)
    dvs = await client.uaclient.read(rp)
    out = {}
    for k, nid in enumerate(variables):
        dtype, access = dvs[2 * k], dvs[2 * k + 1]
        ok = dtype.StatusCode is None or dtype.StatusCode.is_good()
        name = _type_name(dtype.Value.Value) if ok and dtype.Value and dtype.Value.Value else "?"
        ok = access.StatusCode is None or access.StatusCode.is_good()
        level = access.Value.Value if ok and access.Value is not None else 0
        out[nid] = (name, isinstance(level, int) and bool(level & _CURRENT_WRITE))
    return out


async def browse_tree(client, depth: int, include_ns0: bool) -> list[Row]:
    """Everything below Objects, in tree order (see :class:`Row`)."""
    objects = ua.NodeId(ua.ObjectIds.ObjectsFolder, 0)
    children: dict[ua.NodeId, list[tuple[list[str], ua.NodeId, int]]] = {}
    level = [(["Objects"], objects)]
    info: dict[ua.NodeId, tuple[str, bool]] = {}
    for _ in range(depth):
        if not level:
            break
        params = ua.BrowseParameters()
        params.RequestedMaxReferencesPerNode = 0
        for _, nid in level:
            d = ua.BrowseDescription()
            d.NodeId = nid
            d.BrowseDirection = ua.BrowseDirection.Forward
            d.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HierarchicalReferences, 0)
            d.IncludeSubtypes = True
            d.NodeClassMask = int(_MASK)
            d.ResultMask = int(ua.BrowseResultMask.All)
            params.NodesToBrowse.append(d)
        results = await client.uaclient.browse(params)
        nxt = []
        for (path, nid), result in zip(level, results):
            refs = list(result.References)
            cp = result.ContinuationPoint
            while cp:
                more = ua.BrowseNextParameters()
                more.ContinuationPoints = [cp]
                (res,) = await client.uaclient.browse_next(more)
                refs.extend(res.References)
                cp = res.ContinuationPoint
            kids = []
            for ref in refs:
                bn = ref.BrowseName
                if bn.NamespaceIndex == 0 and not include_ns0:
                    continue
                child = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                cpath = [*path, f"{bn.NamespaceIndex}:{_escape(bn.Name)}" if bn.NamespaceIndex else _escape(bn.Name)]
                kids.append((cpath, child, int(ref.NodeClass)))
                nxt.append((cpath, child))
            children[nid] = kids
        variables = [k[1] for kids in (children.get(n, []) for _, n in level) for k in kids
                     if k[2] == ua.NodeClass.Variable]  # fmt: skip
        if variables:
            info.update(await _variable_info(client, variables))
        level = nxt
    out: list[Row] = []

    def walk(nid: ua.NodeId, lvl: int) -> None:
        for path, child, cls in children.get(nid, []):
            dtype, writable = info.get(child, ("", False))
            out.append(Row(lvl, path, child, cls, dtype, writable))
            walk(child, lvl + 1)

    walk(objects, 0)
    return out


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_tree(rows: list[Row], namespaces: list[str]) -> list[str]:
    """The lines ``browse`` prints: a YAML tag line per variable, a comment line per object."""
    lines = []
    for row in rows:
        pad = "  " * row.level
        text_path = "/" + "/".join(row.path)
        node = node_text(row.node_id, namespaces)
        if row.node_class == ua.NodeClass.Variable:
            kind = f"{row.data_type}, writable" if row.writable else row.data_type
            lines.append(f"{pad}- {{name: {_tag_name(row.path)}, node: {_quoted(node)}}}  # {kind}  path: {text_path}")
        else:
            lines.append(f"{pad}# {text_path}  (Object, {node})")
    return lines


async def _browse(args: argparse.Namespace) -> int:
    try:
        source = _source(args)
    except ValidationError as exc:
        print("\n".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()), file=sys.stderr)
        return 2
    try:
        client = await open_session(source, pki_for(args.state_dir))
    except SessionError as exc:
        print(f"{args.endpoint}: {exc}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError, ua.UaError) as exc:
        print(f"{args.endpoint}: cannot connect: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    try:
        namespaces = await read_namespaces(client)
        rows = await browse_tree(client, args.depth, args.all)
    finally:
        await close_quietly(client, source.timeout)
    print(
        f"# {args.endpoint}: {sum(r.node_class == ua.NodeClass.Variable for r in rows)} variable(s); paste the "
        f"lines you need under an asset's tags: (a path: /... works instead of node:)"
    )
    print("# 'writable': the server lets this user write the node; add writable: true to a tag to allow writes")
    print("\n".join(format_tree(rows, namespaces)))
    return 0


def main_browse(args: argparse.Namespace) -> int:
    """Entry point of ``iiot-gateway browse``; 0 listed, 1 cannot connect, 2 bad arguments."""
    return asyncio.run(_browse(args))


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:  # the CLI resolved --config to its gateway.state_dir
        return Path(args.state_dir)
    return Path("state")


def main_trust(args: argparse.Namespace) -> int:
    """Entry point of ``iiot-gateway trust``; 0 done, 1 nothing matched."""
    pki = pki_for(_state_dir(args))
    if args.trust_command == "accept":
        try:
            dst = pki.accept(args.which)
        except CertificateError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"trusted: {dst} (the gateway uses it at its next connect attempt)")
        return 0
    own = pki.own_info()
    if args.trust_command == "own":
        if own is None:
            print(
                f"no own certificate yet in {pki.own_cert.parent}; it is created at the first secured connect",
                file=sys.stderr,
            )
            return 1
        print(f"{own.path}\n  {own.line()}")
        return 0
    for folder in ("rejected", "trusted"):
        infos = pki.list(folder)
        print(f"{folder} ({pki.rejected if folder == 'rejected' else pki.trusted}): {len(infos) or 'none'}")
        for info in infos:
            print(f"  {info.line()}")
    print(f"own: {own.line() if own else 'not generated yet'}")
    if pki.list("rejected"):
        print(
            "trust one with: iiot-gateway trust accept <thumbprint start>"
            + (f" --state-dir {args.state_dir}" if args.state_dir else "")
        )
    return 0
