"""Hot reload: re-read the config file (SIGHUP or ``POST /api/v1/reload``) and restart only what changed.

- An invalid file is refused and logged; the running config is kept.
- Changes to ``gateway:``, ``api:``, ``buffer:`` or ``spool:`` need a restart: such a file is refused too,
  saying which sections differ.
- Assets: an unchanged asset keeps running, its ring buffer and its reducers untouched (no gap in its data);
  a changed one is stopped (what it produced is published first) and started again with the new config
  (a new ring); added ones start, removed ones stop.
- Uplinks: an unchanged uplink keeps its connection; a changed, added or removed one is stopped and started
  (it keeps its spool directory and so its backlog and ``seq``). A Sparkplug uplink restarts whenever the
  assets change (its births and aliases follow them).
- The config before the last reload is kept: ``rollback`` applies it again (``POST
  /api/v1/reload?rollback=true``), e.g. when a changed asset does not connect; the gateway logs a hint when a
  changed or added asset is not connected ``grace`` seconds after the reload.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config import ConfigError, load_config

if TYPE_CHECKING:
    from gateway.engine import Gateway

log = logging.getLogger("gateway.reload")

#: sections a running gateway cannot change (they size or place what is already running)
RESTART_SECTIONS = ("gateway", "api", "buffer", "spool")
GRACE = 10.0


class ReloadRefused(Exception):
    """The new config cannot be applied; ``errors`` says why (file:line lines when ``invalid``: the file
    does not validate, as opposed to a valid file that cannot be applied to a running gateway)."""

    def __init__(self, errors: list[str], *, invalid: bool = False) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors
        self.invalid = invalid


@dataclass
class Plan:
    """What a reload changes."""

    assets_added: list[str] = field(default_factory=list)
    assets_removed: list[str] = field(default_factory=list)
    assets_changed: list[str] = field(default_factory=list)
    uplinks_added: list[str] = field(default_factory=list)
    uplinks_removed: list[str] = field(default_factory=list)
    uplinks_changed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(vars(self).values())

    def summary(self) -> dict[str, list[str]]:
        return {k: v for k, v in vars(self).items() if v}


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json") if model is not None else None


def plan(old: Any, new: Any) -> Plan:
    """Compare two validated configs. Raises :class:`ReloadRefused` for a section that needs a restart."""
    fixed = [s for s in RESTART_SECTIONS if _dump(getattr(old, s)) != _dump(getattr(new, s))]
    if fixed:
        raise ReloadRefused([f"{', '.join(s + ':' for s in fixed)} changed: that needs a restart "
                             "(systemctl restart iiot-gateway); nothing was changed"])
    p = Plan()
    before = {a.id: _dump(a) for a in old.assets}
    after = {a.id: _dump(a) for a in new.assets}
    p.assets_added = [a for a in after if a not in before]
    p.assets_removed = [a for a in before if a not in after]
    p.assets_changed = [a for a in after if a in before and after[a] != before[a]]
    ups_before = {u.name: _dump(u) for u in old.all_uplinks}
    ups_after = {u.name: u for u in new.all_uplinks}
    assets_moved = bool(p.assets_added or p.assets_removed or p.assets_changed)
    writable_before = any(getattr(t, "writable", False) for a in old.assets for t in a.tags)
    writable_after = any(getattr(t, "writable", False) for a in new.assets for t in a.tags)
    order_changed = [u.name for u in old.all_uplinks if u.name in ups_after] != \
        [u.name for u in new.all_uplinks if u.name in ups_before]
    for name, up in ups_after.items():
        if name not in ups_before:
            p.uplinks_added.append(name)
        elif (_dump(up) != ups_before[name] or (up.format == "sparkplug" and assets_moved)
              or writable_before != writable_after or order_changed):
            p.uplinks_changed.append(name)
    p.uplinks_removed = [u for u in ups_before if u not in ups_after]
    return p


async def apply(gw: Gateway, new: Any) -> Plan:
    """Make the running ``gw`` run ``new`` (see the module docstring). Loop thread; one at a time."""
    async with gw.reload_lock:
        if gw._stop is None or gw._stop.is_set():
            raise ReloadRefused(["the gateway is not running (or is stopping)"])
        p = plan(gw.cfg, new)
        if p.empty:
            gw.previous_cfg, gw.cfg = gw.cfg, new
            log.info("reload: nothing changed")
            return p
        restart_ups = set(p.uplinks_changed) | set(p.uplinks_removed)
        stopping = [n for n in gw.norths if n.uplink.name in restart_ups]
        # sources first (what they produced is published by every uplink still running), then the uplinks
        gone = p.assets_removed + p.assets_changed
        await gw._stop_sources(gone)
        for asset_id in gone:
            asset = gw.assets[asset_id]
            for n in gw.norths:
                n.publisher.remove_asset(asset)
            asset.batch_listeners.clear()
        if stopping:
            await gw._stop_norths(stopping)
        gw.norths = [n for n in gw.norths if n not in stopping]
        for asset_id in gone:
            del gw.assets[asset_id]
        gw.previous_cfg, gw.cfg = gw.cfg, new
        started = []
        by_id = {a.id: a for a in new.assets}
        for asset_id in p.assets_added + p.assets_changed:
            asset = gw.assets[asset_id] = gw._asset(by_id[asset_id])
            started.append(asset)
        gw.assets = {a.id: gw.assets[a.id] for a in new.assets}  # config order (Sparkplug aliases, API lists)
        for n in gw.norths:
            n.publisher.assets = gw.assets
            for asset in started:
                n.publisher.add_asset(asset)
        assert gw.build_norths is not None  # gateway.daemon.build() sets it
        fresh = gw.build_norths(new, only=set(p.uplinks_changed) | set(p.uplinks_added))
        for n in fresh:
            await n.delivery.open()
            gw._start_north(n)
        order = [u.name for u in new.all_uplinks]
        gw.norths = sorted(gw.norths + fresh, key=lambda n: order.index(n.uplink.name))
        for n in gw.norths:
            if n.commands is not None:
                n.commands.assets = gw.assets
        for asset in started:
            gw._start_source(asset)
        log.info("reload applied: %s", ", ".join(f"{k.replace('_', ' ')} {', '.join(v)}" for k, v in p.summary().items()))
        if started:
            assert gw._tg is not None  # reloads are applied while the gateway runs
            gw._tg.create_task(_grace_check(gw, [a.id for a in started]), name="reload-grace")
        return p


async def _grace_check(gw: Gateway, asset_ids: list[str], grace: float = GRACE) -> None:
    assert gw._stop is not None
    try:
        async with asyncio.timeout(grace):
            await gw._stop.wait()
        return  # stopping: nothing to advise
    except TimeoutError:
        pass
    down = [a for a in asset_ids if a in gw.assets and gw.assets[a].status.state != "connected"]
    if down:
        log.warning("reload: asset(s) %s not connected %gs after the reload; POST /api/v1/reload?rollback=true "
                    "restores the previous config", ", ".join(down), grace)


async def reload_file(gw: Gateway) -> Plan:
    """Re-read ``gw.config_path`` and apply it; an invalid file is refused, logged, and changes nothing."""
    if gw.config_path is None:
        raise ReloadRefused(["this gateway was not started from a file"])
    try:
        new = await asyncio.to_thread(load_config, gw.config_path)
    except ConfigError as exc:
        errors = [str(e) for e in exc.errors]
        log.error("reload refused, the running config is kept: %s", "; ".join(errors))
        raise ReloadRefused(errors, invalid=True) from None
    except OSError as exc:
        log.error("reload refused, the running config is kept: cannot read %s: %s", gw.config_path, exc)
        raise ReloadRefused([f"cannot read {gw.config_path}: {exc}"], invalid=True) from None
    try:
        return await apply(gw, new)
    except ReloadRefused as exc:
        log.error("reload refused, the running config is kept: %s", exc)
        raise


async def rollback(gw: Gateway) -> Plan:
    """Apply the config from before the last reload again."""
    if gw.previous_cfg is None:
        raise ReloadRefused(["no earlier config to roll back to"])
    log.info("reload: rolling back to the config before the last reload")
    return await apply(gw, gw.previous_cfg)
