"""Config models of an OPC UA source and its tags (the ``source:`` and ``tags:`` blocks of an asset).

Security (see docs/opcua.md): ``security_policy`` Basic256Sha256, Aes128_Sha256_RsaOaep or
Aes256_Sha256_RsaPss with ``security_mode`` Sign or SignAndEncrypt. Policy ``None`` sends everything in
clear text and the deprecated policies Basic128Rsa15 and Basic256 use broken algorithms: each needs
``allow_insecure: true``, except policy None towards a loopback endpoint (127.0.0.0/8, ::1, localhost),
whose traffic never leaves the machine. User identity: anonymous (default), ``username``/``password``,
or ``user_certificate``/``user_private_key``.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator

from drivers.opcua.browsepath import BrowsePath, parse_browse_path
from drivers.opcua.nodeid import ACCEPTED_FORMS, NodeRef, parse_node_id
from gateway.config.common import Claim, Duration, SourceBase, TagBase, empty_is_none, tcp_resource

SecurityPolicyName = Literal[
    "None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss", "Basic128Rsa15", "Basic256"
]
SECURE_POLICIES = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
DEPRECATED_POLICIES = ("Basic128Rsa15", "Basic256")


def is_loopback(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: traffic that never leaves this machine."""
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class OpcUaSource(SourceBase):
    """One OPC UA server: endpoint, security, user identity, and poll or subscription mode."""

    driver: Literal["opcua"]
    endpoint: str = Field(description="Server endpoint URL, e.g. opc.tcp://192.168.0.10:4840/")
    mode: Literal["poll", "subscribe"] = Field(
        "poll",
        description="poll: one Read of every tag each `poll`; subscribe: the server reports changes "
        "(monitored items), see publishing_interval and the tags' sampling_interval / server_deadband",
    )
    publishing_interval: Duration | None = Field(
        None, gt=0, description="subscribe mode: how often the server sends changes (default: `poll`)"
    )
    sampling_interval: Duration | None = Field(
        None, ge=0, description="subscribe mode: default sampling interval of the tags (default: publishing interval)"
    )
    security_policy: SecurityPolicyName = Field(
        "None",
        description="Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss; None and the deprecated "
        "Basic128Rsa15 / Basic256 need allow_insecure: true (None is allowed without it on a loopback endpoint)",
    )
    security_mode: Literal["Sign", "SignAndEncrypt"] = Field(
        "SignAndEncrypt", description="Message security with a policy other than None"
    )
    allow_insecure: bool = Field(
        False, description="Allow security_policy None and the deprecated policies Basic128Rsa15 and Basic256"
    )
    application_uri: str | None = Field(
        None,
        description="The gateway's application URI, written into its certificate "
        "(default: urn:<hostname>:iiot-gateway)",
    )
    username: str | None = Field(None, description="User name for the session (empty: anonymous)")
    password: SecretStr | None = Field(None, description="Password for the session (empty: none)")
    user_certificate: str | None = Field(
        None, description="X.509 user identity: certificate file (PEM or DER); needs user_private_key"
    )
    user_private_key: str | None = Field(None, description="X.509 user identity: private key file (PEM or DER)")
    max_nodes_per_read: int | None = Field(
        None,
        ge=1,
        description="Most nodes in one Read request (default: the server's OperationLimits/MaxNodesPerRead, "
        "or 500 when the server does not say)",
    )
    session_timeout: Duration = Field(
        60.0, gt=0, description="Session timeout the gateway asks for; the server drops an abandoned session after it"
    )

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp(cls, v: str) -> str:
        example = "e.g. opc.tcp://192.168.0.10:4840/"
        if not v.startswith("opc.tcp://"):
            raise ValueError(f"endpoint must be an opc.tcp:// URL, {example}")
        url = urlparse(v)
        try:
            port = url.port
        except ValueError:
            raise ValueError(f"endpoint has an invalid port, {example}") from None
        if not url.hostname or port is None:
            raise ValueError(f"endpoint must name a host and a port, {example}")
        return v

    _empty_is_none = field_validator(
        "username", "password", "user_certificate", "user_private_key", "application_uri", mode="before"
    )(empty_is_none)

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSource:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not; set both or neither")
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ValueError("user_certificate and user_private_key go together; set both or neither")
        if self.user_certificate is not None and self.username is not None:
            raise ValueError("choose one user identity: username/password or user_certificate, not both")
        policy = self.security_policy
        if policy in DEPRECATED_POLICIES and not self.allow_insecure:
            raise ValueError(
                f"security_policy {policy} is deprecated (SHA-1 / weak keys); use Basic256Sha256, "
                "Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss, or set allow_insecure: true to accept it"
            )
        if policy == "None" and not self.allow_insecure and not is_loopback(urlparse(self.endpoint).hostname):
            raise ValueError(
                "security_policy None sends values and passwords in clear text over the network; set "
                "security_policy: Basic256Sha256 (or Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss), or "
                "set allow_insecure: true to accept it"
            )
        if policy == "None" and self.user_certificate is not None:
            raise ValueError("a user certificate needs a security_policy other than None (the token is signed)")
        return self

    @property
    def secured(self) -> bool:
        """True when the channel uses a security policy (the gateway then needs its own certificate)."""
        return self.security_policy != "None"

    def claims(self) -> tuple[Claim, ...]:
        """The server's TCP address: shared with other OPC UA assets on the same server."""
        url = urlparse(self.endpoint)
        return (Claim(tcp_resource(url.hostname or "", url.port or 0), "OPC UA", "endpoint"),)


class OpcUaTag(TagBase):
    """One variable, by node id (``node``) or browse path (``path``). Its Value must be a scalar."""

    node: str | None = Field(None, description=f"Node id: {ACCEPTED_FORMS}")
    path: str | None = Field(
        None,
        validation_alias=AliasChoices("path", "browse_path"),
        description="Browse path from the Root folder instead of a node id, e.g. "
        "/Objects/2:Line1/2:Press3/2:Pressure (resolved at connect)",
    )
    sampling_interval: Duration | None = Field(
        None, ge=0, description="subscribe mode: how often the server samples this value (default: the source's)"
    )
    queue_size: int | None = Field(
        None,
        ge=1,
        description="subscribe mode: values the server keeps between two publishes (default: enough for "
        "publishing_interval / sampling_interval, so no sample is dropped)",
    )
    server_deadband: float = Field(
        0.0,
        ge=0,
        description="subscribe mode: the server reports a change only when it exceeds this "
        "(see server_deadband_type); 0: every change",
    )
    server_deadband_type: Literal["absolute", "percent"] = Field(
        "absolute",
        description="absolute: in engineering units; percent: of the variable's EURange (the server needs one)",
    )

    @field_validator("node")
    @classmethod
    def _node_id(cls, v: str | None) -> str | None:
        if v is not None:
            parse_node_id(v)
        return v

    @field_validator("path")
    @classmethod
    def _browse_path(cls, v: str | None) -> str | None:
        if v is not None:
            parse_browse_path(v)
        return v

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaTag:
        if (self.node is None) == (self.path is None):
            raise ValueError(
                'give the variable either as node (e.g. node: "ns=2;s=Oven1.Temperature") or as path '
                "(e.g. path: /Objects/2:Line1/2:Press3/2:Pressure), exactly one of them"
            )
        if self.server_deadband_type == "percent" and not 0 < self.server_deadband <= 100:
            raise ValueError("a percent server_deadband must be more than 0 and at most 100")
        return self

    @property
    def node_ref(self) -> NodeRef | None:
        """The parsed node id (namespace URI not yet resolved); None for a tag given by browse path."""
        return None if self.node is None else parse_node_id(self.node)

    @property
    def browse_path(self) -> BrowsePath | None:
        """The parsed browse path; None for a tag given by node id."""
        return None if self.path is None else parse_browse_path(self.path)
