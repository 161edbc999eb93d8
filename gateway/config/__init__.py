"""The gateway's config: pydantic models, and loading a YAML file into them with located errors.

``load_config(path)`` returns the validated ``GatewayConfig`` or raises :class:`ConfigError` listing every
problem as ``file:line: path: message``.
"""

from gateway.config.common import Duration, Name, SourceBase, StrictModel, TagBase, parse_duration
from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.loader import load_config
from gateway.config.yamlfloat import YamlFloat
from gateway.config.models import (
    ApiSection,
    AssetBase,
    BufferSection,
    GatewaySection,
    LinkSection,
    MqttSection,
    UplinkSection,
    TlsSection,
    asset_models,
    config_model,
)

__all__ = [
    "ApiSection",
    "AssetBase",
    "BufferSection",
    "ConfigError",
    "ConfigIssue",
    "Duration",
    "GatewaySection",
    "LinkSection",
    "MqttSection",
    "UplinkSection",
    "Name",
    "SourceBase",
    "StrictModel",
    "TagBase",
    "TlsSection",
    "YamlFloat",
    "asset_models",
    "config_model",
    "load_config",
    "parse_duration",
]
