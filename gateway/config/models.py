"""The pydantic models of the gateway's YAML config.

The ``assets[].source`` / ``assets[].tags`` part depends on the driver: each driver contributes its own
``SourceConfig`` and ``TagConfig`` models (see :mod:`gateway.driver`), and :func:`config_model` builds the
asset union from the driver registry, discriminated on ``source.driver``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, Union

from pydantic import (
    Discriminator,
    Field,
    SecretStr,
    Tag,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.config.common import Duration, Name, ReduceProfile, SourceBase, StrictModel, TagBase, empty_is_none
from gateway.config.cross import raise_startup_problems
from gateway.driver import registry


def first_repeated(names: Iterable[str]) -> str | None:
    """The first name that comes a second time (the duplicate a config error names), or None."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


class GatewaySection(StrictModel):
    """This gateway: its id and where its data goes in the Unified Namespace."""

    id: Name = Field(description="This gateway's id; used in its status topic and as the MQTT client id")
    namespace: str = Field(
        description="Unified-Namespace topic prefix, e.g. acme/plant-a/press-shop/line1 (enterprise/site/area/line)",
        min_length=1,
    )
    state_dir: str = Field("state", description="Directory for the gateway's own state (spool, certificates)")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_summary_interval: Duration = Field(
        60.0, gt=0, description="A flapping asset logs its first state changes, then one summary per interval"
    )

    @field_validator("namespace")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        if any(c in v for c in "+#\x00") or v.startswith("/") or v.endswith("/") or "//" in v:
            raise ValueError("namespace must be topic levels separated by '/', without '+', '#', or empty levels")
        return v


class TlsSection(StrictModel):
    """TLS to the MQTT broker."""

    ca_file: str | None = Field(None, description="CA bundle to verify the broker (default: system CAs)")
    cert_file: str | None = Field(None, description="Client certificate (PEM) for mutual TLS")
    key_file: str | None = Field(None, description="Client private key (PEM)")
    insecure_skip_verify: bool = Field(
        False, description="Do not verify the broker's certificate. Never in production."
    )


Compression = Literal["none", "zlib", "zstd"]
PayloadShape = Literal["full", "compact"]


def _compression_available(v: str | None) -> str | None:
    from gateway.encoders import check_compression

    if v is not None:
        check_compression(v)
    return v


class LinkSection(StrictModel):
    """One route to the uplink's broker (e.g. the plant Ethernet, then a 5G router). Tried in order; one
    connection at a time. Keys left unset take the uplink's value; the profile keys (publish_interval, reduce,
    compression, qos, payload, last_interval, metrics_interval) apply while this link is the active one."""

    name: Name = Field(description="Name of the link, shown on the status API and in logs (e.g. ethernet, cellular)")
    host: str = Field(min_length=1, description="Broker host name or address (resolved at every connect)")
    port: int = Field(1883, ge=1, le=65535)
    bind_address: str | None = Field(None, description="Local source address of the connection")
    bind_interface: str | None = Field(
        None, description="Local network interface (SO_BINDTODEVICE, Linux, needs CAP_NET_RAW), e.g. wwan0"
    )
    tls: TlsSection | None = Field(None, description="TLS for this link (default: the uplink's tls)")
    username: str | None = None
    password: SecretStr | None = None
    keepalive: Duration | None = Field(None, ge=5, description="MQTT keepalive on this link (default: the uplink's)")
    metered: bool = Field(False, description="A link that costs per byte (cellular); shown on the status API")
    max_bytes_per_day: int | None = Field(
        None,
        ge=1024,
        description="Daily byte budget (local midnight to midnight); once spent, data goes to the "
        "spool until the budget resets or a better link returns; statuses are still sent",
    )
    publish_interval: Duration | None = Field(None, gt=0)
    reduce: ReduceProfile | None = None
    compression: Compression | None = None
    qos: Literal[0, 1] | None = None
    payload: PayloadShape | None = None
    last_interval: Duration | None = None
    metrics_interval: Duration | None = Field(None, gt=0)

    _compression = field_validator("compression")(_compression_available)
    _empty_user = field_validator("username", "password", mode="before")(empty_is_none)


class MqttSection(StrictModel):
    """One uplink: an MQTT broker the gateway publishes to, how often and in what shape. ``mqtt:`` is the
    one-uplink shorthand of ``uplinks:`` (its name is ``mqtt``)."""

    name: Name = Field("mqtt", description="Name of the uplink: status API, metrics, spool directory")
    format: Literal["json", "sparkplug"] = Field(
        "json", description="Payload format: json (Unified Namespace topics) or sparkplug (Sparkplug B 3.0 edge node)"
    )
    group_id: str | None = Field(
        None, description="sparkplug: the Sparkplug group id (required with format: sparkplug)"
    )
    primary_host_id: str | None = Field(
        None, description="sparkplug: publish births only while this host application's STATE is online"
    )
    links: list[LinkSection] | None = Field(
        None, min_length=1, description="Routes to the broker in order of preference, with failover and failback"
    )
    host: str | None = Field(None, min_length=1, description="Broker host (one-link shorthand of `links:`)")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (with `host`)")
    client_id: str | None = Field(None, description="Default: the gateway id (with several uplinks: <id>-<name>)")
    username: str | None = None
    password: SecretStr | None = None
    keepalive: Duration = Field(30.0, ge=5)
    tls: TlsSection | None = Field(None, description="Enable TLS (certificates are verified)")
    publish_interval: Duration = Field(1.0, gt=0, description="How often each asset's data message is sent")
    heartbeat: Duration = Field(60.0, gt=0, description="Every tag is sent at least this often, changed or not")
    qos: Literal[0, 1] = 1
    reconnect_max: Duration = Field(5.0, gt=0, description="Cap of the reconnect backoff (jittered)")
    max_queued: int = Field(
        10000, ge=1, description="Data messages waiting in RAM for the link; beyond this they go to the disk spool"
    )
    compression: Compression = Field(
        "none", description="Compress data payloads; the topic then ends in /zlib or /zstd (docs/reduction.md)"
    )
    payload: PayloadShape = Field(
        "full",
        description="full: every tag as {ts, v, q}; compact: a bare value where quality is good and ts "
        "is the message's (README: Compact payload)",
    )
    compact_ts_tolerance: Duration = Field(
        0.05,
        ge=0,
        le=10,
        description="compact: a good value sampled at most this long before the message's ts "
        "is written bare (the message ts stands for it); 0: only an exactly equal ts",
    )
    reduce: ReduceProfile | None = Field(
        None, description="Reduction defaults for every tag that does not set the field itself (docs/reduction.md)"
    )
    failback_after: Duration = Field(
        60.0,
        ge=0,
        description="Return to a better link once it has been reachable this long (probed with a real MQTT connect)",
    )
    last_interval: Duration = Field(
        10.0,
        ge=0,
        description="Retained {namespace}/{asset}/last with every tag's last value, at most this often (0: off)",
    )
    metrics_interval: Duration = Field(10.0, gt=0, description="How often the retained metrics message is sent")
    commands: bool | None = Field(
        None, description="Accept write commands on this uplink (default: the first uplink only)"
    )
    cmd_max_age: Duration = Field(
        10.0, gt=0, description="A write command whose ts is further than this from now is refused as stale"
    )

    _compression = field_validator("compression")(_compression_available)
    _empty_user = field_validator("username", "password", mode="before")(empty_is_none)

    @field_validator("links")
    @classmethod
    def _unique_links(cls, v: list[LinkSection] | None) -> list[LinkSection] | None:
        if (name := first_repeated(link.name for link in v or ())) is not None:
            raise PydanticCustomError("duplicate_link", "duplicate link name '{name}'", {"name": name})
        return v

    @field_validator("host")
    @classmethod
    def _one_form(cls, v: str | None, info: Any) -> str | None:
        links = info.data.get("links")
        if v is not None and links:
            raise ValueError("give either host/port (one link) or links:, not both")
        if v is None and not links and "links" in info.data:
            raise PydanticCustomError("missing", "Field required (host, or links: with one or more links)", {})
        return v

    @field_validator("group_id", "primary_host_id")
    @classmethod
    def _sparkplug_id(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#\x00")):
            raise ValueError("a Sparkplug id is one topic level: not empty, no '/', '+' or '#'")
        return v

    @model_validator(mode="after")
    def _sparkplug_needs(self) -> "MqttSection":
        if self.format == "sparkplug":
            if self.group_id is None:
                raise PydanticCustomError("missing_group", "format: sparkplug needs group_id", {})
            if self.compression != "none" or any(k.compression not in (None, "none") for k in self.links or ()):
                raise PydanticCustomError(
                    "sparkplug_compression",
                    "Sparkplug payloads are protobuf, sent uncompressed: remove compression",
                    {},
                )
        elif self.group_id is not None or self.primary_host_id is not None:
            raise PydanticCustomError("sparkplug_only", "group_id and primary_host_id need format: sparkplug", {})
        return self

    @model_validator(mode="after")
    def _port_without_host(self) -> "MqttSection":
        if self.links is not None and "port" in self.model_fields_set:
            raise PydanticCustomError("two_forms", "give either host/port (one link) or links:, not both", {})
        return self


class UplinkSection(MqttSection):
    """One entry of ``uplinks:``: like ``mqtt:``, with a required name."""

    name: Name = Field(description="Name of the uplink: status API, metrics, spool directory (<spool.path>/<name>)")


class ApiSection(StrictModel):
    """The HTTP status API (per-asset status, history, health probes)."""

    listen: str = Field("127.0.0.1:8080", description="host:port of the status API")
    enabled: bool = True
    token: SecretStr | None = Field(
        None,
        description="Bearer token that allows writes through the API, e.g. ${API_TOKEN} (at least 16 characters); "
        "without it API writes are off (docs/write-back.md)",
    )

    _empty_token = field_validator("token", mode="before")(empty_is_none)

    @field_validator("token")
    @classmethod
    def _token_strength(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("token must be at least 16 characters (e.g. the output of: openssl rand -hex 32)")
        return v

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not (1 <= int(port) <= 65535) or not _bindable(host):
            raise ValueError(
                "expected host:port, e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080 (an IP address "
                "or a host name of letters, digits, '-' and '.', and a port 1..65535)"
            )
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def _bindable(host: str) -> bool:
    """An IP address (IPv6 in brackets or bare) or an ASCII host name: what a socket can be bound to."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        return bare == host and len(host) <= 253 and all(_HOST_LABEL.fullmatch(p) for p in host.split("."))


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class SpoolSection(StrictModel):
    """The on-disk store-and-forward spool of data messages (docs/delivery-guarantees.md)."""

    path: str | None = Field(None, description="Spool directory (default: <gateway.state_dir>/spool)")
    max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=64 * 1024,
        description="Disk budget of the spooled messages in bytes (default 256 MiB); beyond it the policy applies",
    )
    policy: Literal["drop_oldest", "drop_newest"] = Field(
        "drop_oldest", description="What to drop when the spool is full; dropped messages and samples are counted"
    )
    durability: Literal["outage", "always"] = Field(
        "outage",
        description="outage: write to disk only while the broker is unreachable or behind (kind to SD cards); "
        "always: every message is written and fsync'ed before it is sent (survives a crash while the link is up)",
    )
    replay_rate: float = Field(50.0, gt=0, description="Spooled messages replayed per second at most")
    ack_timeout: Duration | None = Field(
        None, gt=0, description="A PUBACK later than this closes and reopens the link (default: mqtt.keepalive)"
    )


class BufferSection(StrictModel):
    """The in-memory history (ring buffer) of every tag."""

    seconds: Duration = Field(600.0, gt=0, description="History kept in RAM per tag (ring buffer), in seconds")


class AssetBase(StrictModel):
    """One machine or device: its source (driver and connection) and its tags."""

    id: Name
    description: str | None = None
    #: each driver's asset model (:func:`asset_models`) narrows these to its own source and tag models
    source: SourceBase
    tags: list[TagBase]

    @model_validator(mode="after")
    def _unique_tag_names(self) -> "AssetBase":
        if (name := first_repeated(tag.name for tag in self.tags)) is not None:
            raise PydanticCustomError(
                "duplicate_tag_name", "duplicate tag name '{name}' in asset '{asset}'", {"name": name, "asset": self.id}
            )
        return self


class Config(StrictModel):
    """The whole config file of one gateway: the type the engine, the sources and the uplinks are given.

    :func:`config_model` derives the model that validates a file from it, with ``assets`` a union of the
    installed drivers' asset models (so each asset is an instance of a subclass of :class:`AssetBase`)."""

    gateway: GatewaySection = Field(description="This gateway's id and Unified-Namespace prefix")
    mqtt: MqttSection | None = Field(None, description="The MQTT broker data is published to (one uplink)")
    api: ApiSection = Field(default_factory=ApiSection, description="The HTTP status API")
    buffer: BufferSection = Field(default_factory=BufferSection, description="In-memory history per tag")
    spool: SpoolSection = Field(default_factory=SpoolSection, description="On-disk store-and-forward spool")
    uplinks: list[UplinkSection] | None = Field(
        None, min_length=1, description="Several uplinks at once, each with its own publisher, seq and spool"
    )
    assets: list[AssetBase] = Field(min_length=1, description="The machines polled, each with one source and its tags")

    @field_validator("uplinks")
    @classmethod
    def _uplinks_or_mqtt(cls, v: list[UplinkSection] | None, info: Any) -> list[UplinkSection] | None:
        if v is not None:
            if info.data.get("mqtt") is not None:
                raise ValueError("give either mqtt: (one uplink) or uplinks:, not both")
            if (name := first_repeated(up.name for up in v)) is not None:
                raise PydanticCustomError("duplicate_uplink", "duplicate uplink name '{name}'", {"name": name})
        return v

    @model_validator(mode="after")
    def _some_uplink(self) -> "Config":
        if self.mqtt is None and self.uplinks is None:
            raise PydanticCustomError("missing_uplink", "the config needs mqtt: or uplinks:", {})
        return self

    @property
    def all_uplinks(self) -> list[MqttSection]:
        """The uplinks in order: ``uplinks:``, or the one ``mqtt:``."""
        return list(self.uplinks) if self.uplinks is not None else [self.mqtt]  # type: ignore[list-item]

    @model_validator(mode="after")
    def _unique_asset_ids(self) -> "Config":
        if (asset_id := first_repeated(asset.id for asset in self.assets)) is not None:
            raise PydanticCustomError("duplicate_asset_id", "duplicate asset id '{id}'", {"id": asset_id})
        return self

    @model_validator(mode="after")
    def _startup_checks(self) -> "Config":
        raise_startup_problems(self)  # ports, serial lines, unit ids, TLS files, RAM (gateway/config/cross.py)
        return self


def _driver_of(value: Any) -> str | None:
    if isinstance(value, dict):
        source = value.get("source")
        return source.get("driver") if isinstance(source, dict) else None
    return getattr(getattr(value, "source", None), "driver", None)


@functools.cache
def asset_models() -> dict[str, type[AssetBase]]:
    """Driver name -> asset model with that driver's source and tag models."""
    models: dict[str, type[AssetBase]] = {}
    for name, drv in registry().items():

        def _driver_check(self: AssetBase, _check: Callable[[Any, list[Any]], None] = drv.check) -> AssetBase:
            _check(self.source, self.tags)
            return self

        validators: dict[str, Any] = {"_driver_check": model_validator(mode="after")(_driver_check)}
        tag_list: Any = list[drv.TagConfig]  # type: ignore[name-defined]  # a model known at run time only
        models[name] = create_model(
            f"Asset_{name}",
            __base__=AssetBase,
            __validators__=validators,
            __doc__=f"An asset read through the {name} driver: its connection and its tags.",
            source=(drv.SourceConfig, Field(description=f"Connection of a {name} device")),
            tags=(tag_list, Field(min_length=1, description="The values read from this asset")),
        )
    return models


@functools.cache
def config_model() -> type[Config]:
    """The root model, ``GatewayConfig``, built once from the installed drivers."""
    models = asset_models()
    names = ", ".join(models)
    asset_union: Any = Annotated[
        Union[tuple(Annotated[m, Tag(n)] for n, m in models.items())],
        Discriminator(
            _driver_of,
            custom_error_type="unknown_driver",
            custom_error_message=f"source.driver must be one of: {names}",
            custom_error_context={"drivers": names},
        ),
    ]

    class GatewayConfig(Config):
        """The whole config file of one gateway."""

        assets: list[asset_union] = Field(
            min_length=1, description=f"The machines polled, each with one source and its tags; drivers: {names}"
        )

    return GatewayConfig
