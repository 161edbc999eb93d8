"""Loading a config file: YAML, ``${...}`` substitution, validation, located errors.

:func:`load_config` is the one entry point. It reports every problem at once as a :class:`ConfigError`
whose lines read ``config/plant.yaml:42: assets[2].tags[5].type: expected one of: int16, uint16, ...``.

A file is read first without positions (:mod:`gateway.config.fastyaml`, libyaml); only a file that has
errors, or YAML that path leaves alone, is read with ruamel.yaml's round trip (:mod:`gateway.config.roundtrip`),
which puts file, line and field on every error. ruamel.yaml is imported only then.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.config.bounds import flow_depth, read_bounded
from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.fastyaml import plain_data
from gateway.config.yamlfloat import YamlFloat

__all__ = ["YamlFloat", "load_config"]


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    model: type[BaseModel] | None = None,
) -> Any:
    """Read, substitute and validate a config file into ``GatewayConfig`` (or ``model``, for tests).

    ``env`` defaults to ``os.environ``. Raises :class:`ConfigError` listing every problem found, each with
    file, line and field path; substituted values never appear in its messages.
    """
    if model is None:
        from gateway.config.models import config_model

        model = config_model()
    file = os.fspath(path)
    try:
        text = read_bounded(file)
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text ({e.reason} at byte {e.start})"
        raise ConfigError([ConfigIssue(file, None, None, "", problem)]) from None
    except OSError as e:
        problem = f"cannot read the config file: {e.strerror or e}"
        raise ConfigError([ConfigIssue(file, None, None, "", problem)]) from None

    too_deep = flow_depth(file, text)
    if too_deep is not None:
        raise ConfigError([too_deep])
    env = env if env is not None else os.environ
    data = plain_data(text, env, Path(file).parent)
    if data is not None:  # most files: read without positions; only a file with errors is read again with them
        try:
            return model.model_validate(data)
        except ValidationError:
            pass
        finally:
            del data

    from gateway.config.roundtrip import load_located

    return load_located(file, text, env, model)
