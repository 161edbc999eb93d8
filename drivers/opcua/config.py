"""Config models of an OPC UA source and its tags (the ``source:`` and ``tags:`` blocks of an asset)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator, model_validator

from drivers.opcua.nodeid import ACCEPTED_FORMS, NodeRef, parse_node_id
from gateway.config.common import Duration, SourceBase, TagBase


class OpcUaSource(SourceBase):
    """One OPC UA server (security mode None in this version; optional user name and password)."""

    driver: Literal["opcua"]
    endpoint: str = Field(description="Server endpoint URL, e.g. opc.tcp://192.168.0.10:4840/")
    username: str | None = Field(None, description="User name for the session (empty: anonymous)")
    password: SecretStr | None = Field(None, description="Password for the session (empty: none)")
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

    @field_validator("username", "password", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @model_validator(mode="after")
    def _password_needs_user(self) -> "OpcUaSource":
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not; set both or neither")
        return self


class OpcUaTag(TagBase):
    """One variable read by its node id. Its Value must be a scalar number, boolean or string."""

    node: str = Field(description=f"Node id: {ACCEPTED_FORMS}")

    @field_validator("node")
    @classmethod
    def _node_id(cls, v: str) -> str:
        parse_node_id(v)
        return v

    @property
    def node_ref(self) -> NodeRef:
        """The parsed node id (namespace URI not yet resolved)."""
        return parse_node_id(self.node)
