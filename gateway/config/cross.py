"""Checks of the whole config that ``run`` would otherwise only meet at start-up: conflicts across assets and
sections, and the files the uplink loads before its first connection.

Every source lists the ports and addresses it uses (:meth:`gateway.config.common.SourceBase.claims`); the
MQTT broker and the status API's listen address join them. :func:`conflicts` compares them all, so that
``validate`` reports, with a line, what ``run`` would otherwise only meet at start-up (two assets on one
RS-485 port with different parity, a unit id twice on one bus, a serial port opened by two drivers, the
API listening on the port an asset or the broker is at). :func:`tls_problems` loads ``mqtt.tls``'s files
as the uplink will (an unreadable CA bundle is a config error, not a crash loop). :func:`ring_memory` sizes the
in-memory history (``buffer.seconds`` at each asset's ``poll``) before it is allocated.

The root model (``GatewayConfig``) calls :func:`raise_startup_problems`; the loader turns each
``(location, message)`` of the raised :data:`CROSS_CHECK` error into its own ``file:line`` line.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError

from gateway.config.common import Claim, tcp_resource

#: pydantic error type of the root model's cross checks; ``ctx["issues"]`` holds ``(loc, message)`` pairs
CROSS_CHECK = "cross_check"
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True, slots=True)
class _User:
    loc: tuple[Any, ...]  # of the section that holds the claim, e.g. ("assets", 2, "source")
    who: str  # "asset 'press-3'"
    claim: Claim


def _shown(resource: str) -> str:
    return resource.partition(":")[2]


def conflicts(cfg: Any) -> list[tuple[tuple[Any, ...], str]]:
    """Every clash between the claims of ``cfg`` (a validated ``GatewayConfig``), in file order.

    Each is ``(location, message)``; the location is the later of the two users (the first one is named
    in the message).
    """
    users: list[_User] = []
    for i, asset in enumerate(cfg.assets):
        for claim in asset.source.claims():
            users.append(_User(("assets", i, "source"), f"asset {asset.id!r}", claim))
    for loc, host, port in reversed(list(_brokers(cfg))):
        users.insert(0, _User(loc, "the MQTT broker", Claim(tcp_resource(host, port), "MQTT", "host")))

    found: list[tuple[tuple[Any, ...], str]] = []
    first: dict[str, _User] = {}
    members: dict[tuple[str, Any], _User] = {}
    for user in users:
        claim = user.claim
        prev = first.setdefault(claim.resource, user)
        where = _shown(claim.resource)
        if prev is not user:
            problem = _clash(prev, user, where)
            if problem is not None:
                found.append(problem)
                if problem[0][-1] == claim.field:  # not sharable at all: its unit id does not matter
                    continue
        if claim.member is not None:
            key, value = claim.member
            other = members.setdefault((claim.resource, value), user)
            if other is not user:
                text = f"{key} {value} on {where} is already used by {other.who}; every slave on one bus needs its own {key}"
                found.append((user.loc + (key,), text))
    found.extend(_api_clashes(cfg, users))
    return sorted(found, key=lambda f: _order(f[0]))


def _uplinks(cfg: Any) -> list[tuple[tuple[Any, ...], Any]]:
    """``(location, uplink section)`` of every uplink: ``uplinks[i]`` or the one ``mqtt``."""
    if getattr(cfg, "uplinks", None):
        return [(("uplinks", i), up) for i, up in enumerate(cfg.uplinks)]
    mqtt = getattr(cfg, "mqtt", None)
    return [(("mqtt",), mqtt)] if mqtt is not None else []


def _brokers(cfg: Any) -> list[tuple[tuple[Any, ...], str, int]]:
    """``(location, host, port)`` of every route to a broker: an uplink's host, or each of its links."""
    out: list[tuple[tuple[Any, ...], str, int]] = []
    for loc, up in _uplinks(cfg):
        if up.links:
            out.extend((loc + ("links", j), link.host, link.port) for j, link in enumerate(up.links))
        elif up.host:
            out.append((loc, up.host, up.port))
    return out


def _clash(prev: _User, user: _User, where: str) -> tuple[tuple[Any, ...], str] | None:
    """What is wrong with ``user`` sharing ``prev``'s resource: another kind of user, an exclusive port or a
    setting that differs (the first one differing, at its field); None when they may share it."""
    before, claim = prev.claim, user.claim
    at = user.loc + (claim.field,)
    if before.user != claim.user:
        return at, f"{where} is already used by {prev.who} ({before.user}); {user.who} ({claim.user}) cannot share it"
    if not claim.shared:
        return at, f"{where} is already opened by {prev.who}; a port is opened by one asset only (the driver holds it exclusively)"
    theirs = dict(before.settings)
    names = ", ".join(k for k, _ in claim.settings)
    for key, value in claim.settings:
        if key in theirs and theirs[key] != value:
            text = (f"{key} {value!r} differs from {prev.who} on the same line {where} ({key} {theirs[key]!r}); "
                    f"every asset on one port must use the same {names}")
            return user.loc + (key,), text
    return None


def _order(loc: tuple[Any, ...]) -> tuple[int, int]:
    sections = {"mqtt": 0, "uplinks": 0, "api": 1, "assets": 2}
    return (sections.get(str(loc[0]), 3), loc[1] if len(loc) > 1 and isinstance(loc[1], int) else -1)


def _api_clashes(cfg: Any, users: list[_User]) -> list[tuple[tuple[Any, ...], str]]:
    api = getattr(cfg, "api", None)
    if api is None or not api.enabled:
        return []
    out = []
    for user in users:
        kind, _, rest = user.claim.resource.partition(":")
        host, _, port = rest.rpartition(":")
        if kind == "tcp" and port.isdigit() and int(port) == api.port and _same_machine(api.host, host):
            text = (f"{api.listen} is where {user.who} is ({user.claim.user} at {host}:{port}): the status API "
                    f"cannot listen on an address the gateway connects to; choose another port")
            out.append((("api", "listen"), text))
            break
    return out


def _is_local(host: str) -> bool:
    if host in _LOCAL_NAMES or host in _WILDCARDS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_machine(listen_host: str, host: str) -> bool:
    """Whether connecting to ``host`` reaches a socket listening on ``listen_host`` of this machine."""
    listen_host, host = listen_host.lower(), host.lower()
    if listen_host == host:
        return True
    if listen_host in _WILDCARDS:
        return _is_local(host)
    names = {"127.0.0.1", "::1"} | _LOCAL_NAMES
    return listen_host in names and host in names


_TLS_FIELD = re.compile(r"^mqtt\.tls\.(\w+) ")


def tls_problems(cfg: Any) -> list[tuple[tuple[Any, ...], str]]:
    """Build every uplink's and link's TLS context as ``run`` does before starting (reads the certificate
    files)."""
    from gateway.uplink.tls import UplinkConfigError, build_ssl_context

    found = []
    for loc, up in _uplinks(cfg):
        places = [(loc, up.tls)] + [(loc + ("links", j), link.tls) for j, link in enumerate(up.links or ())]
        for at, tls in places:
            if tls is None:
                continue
            try:
                build_ssl_context(tls)
            except UplinkConfigError as exc:
                text = str(exc)
                m = _TLS_FIELD.match(text)
                found.append((at + ("tls", m.group(1)) if m else at + ("tls",), text[m.end():] if m else text))
    return found


#: Most RAM the ring buffers of all assets may take (a Raspberry Pi has 1 to 8 GiB)
MAX_RING_BYTES = 2 * 1024**3
#: Bytes per sample in a ring buffer: timestamp int64, value float64, quality uint8
_SAMPLE_BYTES = 17


def ring_memory(cfg: Any) -> list[tuple[tuple[Any, ...], str]]:
    """The ring buffers ``run`` allocates (one slot per ``poll`` over ``buffer.seconds``, per tag, as
    ``RingBuffer.for_rate`` sizes them): an error when they would take more than :data:`MAX_RING_BYTES`."""
    seconds = cfg.buffer.seconds
    per_asset = [(len(a.tags) * max(16, math.ceil(seconds / a.source.poll) + 1) * _SAMPLE_BYTES, a.id)
                 for a in cfg.assets]  # fmt: skip
    total = sum(b for b, _ in per_asset)
    if total <= MAX_RING_BYTES:
        return []
    biggest, asset = max(per_asset)
    text = (f"{seconds:g} s of history per tag needs {_size(total)} of RAM ({_size(biggest)} for asset {asset!r} "
            f"alone), more than {_size(MAX_RING_BYTES)}; keep fewer seconds or poll less often")
    return [(("buffer", "seconds"), text)]


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def raise_startup_problems(cfg: Any) -> None:
    """Raise the :data:`CROSS_CHECK` error listing every conflict and start-up problem of ``cfg`` (none: nothing)."""
    found = tls_problems(cfg) + ring_memory(cfg) + conflicts(cfg)
    if found:
        text = "; ".join(f"{'.'.join(str(p) for p in loc)}: {message}" for loc, message in found)
        raise PydanticCustomError(CROSS_CHECK, "{text}", {"text": text, "issues": found})
