"""The round-trip reading of a config file: ruamel.yaml with positions, so that every error names its file,
line and field (and secrets never show in a message).

:func:`load_located` is what :func:`gateway.config.loader.load_config` falls back to when the file has errors
or YAML the libyaml path leaves alone; for those files it is the reference: the same data, and every problem
at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML, MappingNode, ScalarNode, SequenceNode
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from gateway.config.bounds import MAX_DEPTH, graph_bounds
from gateway.config.cross import CROSS_CHECK
from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.yamlfloat import YamlFloat
from gateway.config.messages import readable
from gateway.config.secrets import is_secret_key, is_secret_path, literal_parts, redact, texts_in_yaml, texts_of
from gateway.config.substitution import FORMS, Substituted, SubstitutionError, substitute

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: A value that is one ``${VAR}`` or ``${file:...}`` reference and nothing else
_SINGLE_REFERENCE = re.compile(r"\$\{(?:[A-Za-z_]\w*(?::-[^}]*)?|file:[^}]*)\}")
#: Errors of the model validators that :func:`_duplicates` already reports with better lines.
_CHECKED_ON_TREE = frozenset({"duplicate_asset_id", "duplicate_tag_name"})


class _Constructor(RoundTripConstructor):
    #: called with the composed node tree before anything is constructed from it (see :func:`_parse`)
    check_tree: Any = None

    def construct_document(self, node: Any) -> Any:
        if self.check_tree is not None:
            self.check_tree(node)
        return super().construct_document(node)

    def construct_text_float(self, node: ScalarNode) -> Any:
        value = self.construct_yaml_float(node)
        return YamlFloat(value, node.value) if isinstance(value, float) else value


_Constructor.add_constructor("tag:yaml.org,2002:float", _Constructor.construct_text_float)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    yaml.allow_duplicate_keys = True  # reported by _duplicate_keys, all of them, with both lines
    return yaml


@dataclass
class _Document:
    """A parsed file: the ruamel tree (lines), the plain data given to pydantic, and what was substituted."""

    file: str
    tree: Any
    data: Any = None
    substituted: dict[tuple[Any, ...], Substituted] = field(default_factory=dict)
    unresolved: set[tuple[Any, ...]] = field(default_factory=set)
    issues: list[ConfigIssue] = field(default_factory=list)
    #: every text a secret key's value can show as (literal, substituted, as written); redacted from messages
    secret_texts: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Place:
    line: int | None  # 1-based
    column: int | None
    parts: tuple[Any, ...]  # path in the document (union tags dropped)
    labels_dropped: bool  # pydantic's loc went past a scalar (union member labels)
    node: Any


def load_located(file: str, text: str, env: Mapping[str, str], model: type[BaseModel]) -> Any:
    """The validated config of ``text`` (read from ``file``), or a :class:`ConfigError` with every problem,
    each at its line."""
    doc = _parse(file, text)
    if doc.tree is None:
        doc.issues.append(ConfigIssue(file, 1, 1, "", "the file is empty; expected gateway:, mqtt: and assets:"))
    elif not isinstance(doc.tree, CommentedMap):
        doc.issues.append(ConfigIssue(file, 1, 1, "", "expected a mapping at the top level (gateway:, mqtt:, assets:)"))
    if doc.issues and not isinstance(doc.tree, CommentedMap):
        raise ConfigError(doc.issues)

    doc.data = _plain(doc, doc.tree, (), (0, 0), env, Path(file).parent)
    doc.issues.extend(_duplicates(doc))
    try:
        config = model.model_validate(doc.data)
    except ValidationError as e:
        doc.issues.extend(_validation_issues(doc, e, model))
        config = None
    if doc.issues:
        issues = sorted(doc.issues, key=lambda i: (i.line or 0, i.column or 0))
        raise ConfigError(replace(i, message=redact(i.message, doc.secret_texts)) for i in issues)
    return config


def _parse(file: str, text: str) -> _Document:
    yaml = _yaml()
    found: dict[str, Any] = {}

    def check(root: Any) -> None:
        # the node tree, checked before it is constructed: parsed once (composing it separately doubled the
        # time and the peak memory of a large file)
        bounds = graph_bounds(file, root)
        if bounds:
            raise ConfigError(bounds)
        found["issues"] = _duplicate_keys(file, root)
        found["secrets"] = _secret_scalars(root)

    yaml.constructor.check_tree = check
    try:
        data = yaml.load(text)
        if not found:  # an empty document: nothing was constructed
            check(None)
        return _Document(file, data, issues=found["issues"], secret_texts=found["secrets"])
    except RecursionError:
        problem = f"invalid YAML: nested too deeply (a config needs a handful of levels; at most {MAX_DEPTH})"
        raise ConfigError([ConfigIssue(file, None, None, "", problem)]) from None
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = " ".join(str(e.problem or e.context or "invalid YAML").split())
        if e.context and e.context_mark is not None and mark is e.problem_mark:
            message += f" ({e.context} at line {e.context_mark.line + 1})"
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        source_line = text.splitlines()[line - 1] if line is not None and line <= len(text.splitlines()) else ""
        if "${" in source_line and "flow" in f"{e.context} {e.problem}":
            message += '; a ${...} value inside {...} or [...] must be quoted: "${VAR}"'
        message = redact(message, texts_in_yaml(text))
        raise ConfigError([ConfigIssue(file, line, col, "", f"invalid YAML: {message}")]) from None
    except YAMLError as e:
        message = redact(" ".join(str(e).split()), texts_in_yaml(text))
        raise ConfigError([ConfigIssue(file, None, None, "", f"invalid YAML: {message}")]) from None


def _secret_scalars(root: Any) -> set[str]:
    """The text, as written, of every scalar below a secret key (also when reached through an alias)."""
    found: set[str] = set()
    seen: set[tuple[int, bool]] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, secret = stack.pop()
        if node is None or (id(node), secret) in seen:
            continue
        seen.add((id(node), secret))
        if isinstance(node, MappingNode):
            for key, value in node.value:
                inner = secret or (isinstance(key, ScalarNode) and is_secret_key(key.value))
                stack.append((value, inner))
        elif isinstance(node, SequenceNode):
            stack.extend((item, secret) for item in node.value)
        elif secret and isinstance(node, ScalarNode) and node.value:
            found |= literal_parts(str(node.value))
    return found


def _duplicate_keys(file: str, root: Any) -> list[ConfigIssue]:
    """Every key that appears twice in one mapping, at the line of its second appearance."""
    issues: list[ConfigIssue] = []
    seen_nodes: set[int] = set()
    stack: list[tuple[Any, tuple[Any, ...]]] = [(root, ())]
    while stack:
        node, parts = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if key.tag == _MERGE_TAG or not isinstance(key, ScalarNode):
                    continue
                line = key.start_mark.line + 1
                if key.value in first:
                    issues.append(
                        ConfigIssue(
                            file,
                            line,
                            key.start_mark.column + 1,
                            format_path(parts + (key.value,)),
                            f"duplicate key {key.value!r} (first at line {first[key.value]})",
                        )
                    )
                else:
                    first[key.value] = line
                stack.append((value, parts + (key.value,)))
        elif isinstance(node, SequenceNode):
            stack.extend((item, parts + (i,)) for i, item in enumerate(node.value))
    return issues


def _plain(
    doc: _Document, node: Any, parts: tuple[Any, ...], pos: tuple[int, int], env: Mapping[str, str], base: Path
) -> Any:
    """The ruamel tree as plain dicts, lists and scalars, with ``${...}`` substituted in string values."""
    if isinstance(node, CommentedMap):
        return {
            _plain_key(k): _plain(doc, v, parts + (k,), _position(node, k, value=True), env, base)
            for k, v in node.items()
        }
    if isinstance(node, CommentedSeq):
        return [_plain(doc, v, parts + (i,), tuple(node.lc.item(i)), env, base) for i, v in enumerate(node)]
    secret = is_secret_path(parts)
    if isinstance(node, bool) or node is None or isinstance(node, YamlFloat):
        value: Any = node
    elif isinstance(node, int):
        value = int(node)
    elif isinstance(node, float):
        value = float(node)
    elif isinstance(node, str):
        value = _substituted(doc, str(node), parts, pos, env, base, secret)
        if secret:
            doc.secret_texts |= literal_parts(str(node))
            if parts in doc.substituted:
                doc.secret_texts.add(value)
        return value
    else:
        value = node
    if secret:
        doc.secret_texts |= texts_of(value)
    return value


def _substituted(
    doc: _Document,
    text: str,
    parts: tuple[Any, ...],
    pos: tuple[int, int],
    env: Mapping[str, str],
    base: Path,
    secret: bool,
) -> str:
    """``text`` with its ``${...}`` resolved; an unresolvable one is an issue (saying nothing of a secret's
    text unless the value is a single reference)."""
    try:
        result = substitute(text, env, base)
    except SubstitutionError as e:
        doc.unresolved.add(parts)
        message = str(e)
        if secret and _SINGLE_REFERENCE.fullmatch(text) is None:
            message = (
                f"cannot resolve the ${{...}} in this secret value (not shown); expected {FORMS}, "
                "and $${ for a literal ${"
            )
        doc.issues.append(ConfigIssue(doc.file, pos[0] + 1, pos[1] + 1, format_path(parts), message))
        return text
    if result is None:
        return text
    if result.sources:
        doc.substituted[parts] = result
    return result.value


def _plain_key(key: Any) -> Any:
    if isinstance(key, bool) or key is None:
        return key
    if isinstance(key, str):
        return str(key)
    if isinstance(key, int):
        return int(key)
    return key


def format_path(parts: Sequence[Any]) -> str:
    """``("assets", 2, "tags", 5, "type")`` -> ``assets[2].tags[5].type``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) and not isinstance(p, bool) else (f".{p}" if out else str(p))
    return out


def _position(node: CommentedMap, key: Any, value: bool = False) -> tuple[int, int]:
    """0-based (line, column) of a key (or its value), also for keys merged in with ``<<: *anchor``."""
    try:
        found = (node.lc.value(key) if value else None) or node.lc.key(key)
        return (found[0], found[1])
    except (KeyError, TypeError):  # no position of its own (TypeError: a map made only of merged keys)
        for source in getattr(node, "merge", ()):
            if isinstance(source, CommentedMap) and key in source:
                return _position(source, key, value)
        return (node.lc.line or 0, node.lc.col or 0)


def locate(tree: Any, loc: Sequence[Any]) -> _Place:
    """Follow a pydantic error location through the ruamel tree as deep as it goes.

    A key present in the tree points at its own line; a missing key at the line of the mapping that lacks
    it; union tags (the driver name after an asset index) are skipped.
    """
    node = tree
    line, col = (tree.lc.line or 0, tree.lc.col or 0) if isinstance(tree, (CommentedMap, CommentedSeq)) else (0, 0)
    parts: list[Any] = []
    i = 0
    while i < len(loc):
        el = loc[i]
        if isinstance(node, CommentedMap):
            if el in node:
                line, col = _position(node, el)
                parts.append(el)
                node = node[el]
                i += 1
                continue
            source = node.get("source")
            if isinstance(source, CommentedMap) and source.get("driver") == el:  # the asset union's tag
                i += 1
                continue
            if i == len(loc) - 1:  # a missing key: at the mapping that lacks it
                parts.append(el)
                return _Place(line + 1, col + 1, tuple(parts), False, None)
            i += 1  # a union tag
            continue
        if isinstance(node, CommentedSeq) and isinstance(el, int) and 0 <= el < len(node):
            line, col = node.lc.item(el)
            parts.append(el)
            node = node[el]
            i += 1
            continue
        break
    return _Place(line + 1, col + 1, tuple(parts), i < len(loc), node)


def _duplicates(doc: _Document) -> list[ConfigIssue]:
    """Duplicate asset ids, and duplicate tag names within an asset, at the line of the second one."""
    issues: list[ConfigIssue] = []
    assets = doc.data.get("assets") if isinstance(doc.data, dict) else None
    if not isinstance(assets, list):
        return issues

    def check(items: list[Any], key: str, base: tuple[Any, ...], what: str) -> None:
        first: dict[str, int | None] = {}
        for i, item in enumerate(items):
            value = item.get(key) if isinstance(item, dict) else None
            if not isinstance(value, str):
                continue
            place = locate(doc.tree, base + (i, key))
            if value in first:
                issues.append(
                    ConfigIssue(
                        doc.file,
                        place.line,
                        place.column,
                        format_path(place.parts),
                        f"duplicate {what} {value!r} (first at line {first[value]})",
                    )
                )
            else:
                first[value] = place.line

    check(assets, "id", ("assets",), "asset id")
    for a, asset in enumerate(assets):
        tags = asset.get("tags") if isinstance(asset, dict) else None
        if isinstance(tags, list):
            check(tags, "name", ("assets", a, "tags"), "tag name")
    return issues


def _validation_issues(doc: _Document, error: ValidationError, model: type[BaseModel]) -> list[ConfigIssue]:
    issues: dict[tuple[Any, ...], ConfigIssue] = {}
    for err in _expanded(error.errors(include_url=False)):
        if err["type"] in _CHECKED_ON_TREE:
            continue
        err = _driver_error(doc, err)
        place = locate(doc.tree, err["loc"])
        if any(place.parts[: len(u)] == u for u in doc.unresolved):
            continue  # already reported: the ${...} could not be resolved
        secrets: dict[str, str] = {}
        if err["type"] not in ("missing", "extra_forbidden"):
            for parts, sub in doc.substituted.items():
                if parts[: len(place.parts)] == place.parts:
                    secrets[sub.value] = ", ".join(sub.sources)
        secret = is_secret_path(place.parts) or is_secret_path([p for p in err["loc"] if isinstance(p, str)])
        message = readable(err, model, secrets, secret=secret)
        issue = ConfigIssue(doc.file, place.line, place.column, format_path(place.parts), message)
        key: tuple[Any, ...] = ("union", place.line, issue.path) if place.labels_dropped else ("one", len(issues))
        if key in issues:  # one value that fails every member of a union: one line
            prev = issues[key]
            if issue.message not in prev.message:
                issues[key] = replace(prev, message=f"{prev.message}; or {issue.message}")
            continue
        issues[key] = issue
    return list(issues.values())


def _expanded(errors: list[Any]) -> list[Any]:
    """The root model's cross checks (one pydantic error) as one error per conflict, at its own place."""
    out: list[Any] = []
    for err in errors:
        if err["type"] == CROSS_CHECK:
            out.extend({"type": CROSS_CHECK, "loc": tuple(loc), "msg": message, "input": None}
                       for loc, message in (err.get("ctx") or {}).get("issues", ()))  # fmt: skip
        else:
            out.append(err)
    return out


def _driver_error(doc: _Document, err: dict[str, Any]) -> dict[str, Any]:
    """Point an unknown or missing ``source.driver`` at the ``driver:`` line with a plain message."""
    if err["type"] != "unknown_driver":
        return err
    asset = err.get("input")
    source = asset.get("source") if isinstance(asset, dict) else None
    drivers = str((err.get("ctx") or {}).get("drivers", ""))
    loc = tuple(err["loc"])
    if not isinstance(asset, dict):
        return {**err, "type": "model_type"}
    if not isinstance(source, dict):
        return {**err, "type": "missing", "loc": loc + ("source",)}
    if "driver" not in source:
        return {**err, "type": "value_error", "loc": loc + ("source",), "input": source,
                "msg": f"required key 'driver' is missing (one of: {drivers})"}  # fmt: skip
    return {
        **err,
        "type": "literal_error",
        "loc": loc + ("source", "driver"),
        "input": source["driver"],
        "ctx": {"expected": ", ".join(f"'{d.strip()}'" for d in drivers.split(",") if d.strip())},
        "msg": f"unknown driver; expected one of: {drivers}",
    }
