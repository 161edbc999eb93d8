"""The config reference (``docs/config.md``), generated from the config's JSON Schema.

``iiot-gateway schema --markdown`` writes it; a test regenerates it and fails when the committed file differs.
The generator knows nothing about particular sections: it walks the JSON Schema that the pydantic models
export (:func:`gateway.config.cli.schema`), from the root through every ``$ref``, and writes one table per
model (key, type, default, description) under the path where the model is first met, in the order of the
models' fields. Each asset model (one per installed driver) gets its own section with its ``source`` and
``tags``. So a new key, section, option or driver appears after a regenerate, with no change here.
"""

from __future__ import annotations

import json
import re
import sys
from collections import deque
from pathlib import Path
from typing import Any

from gateway.config.cli import schema

HEADER = """\
# Config reference

Every key of the YAML config file, generated from the config models by `iiot-gateway schema --markdown`
(do not edit by hand: a test fails when this file is stale; regenerate it with
`iiot-gateway schema --markdown`, which writes `docs/config.md`). The README's configuration section shows
worked examples; this page is the complete list. Durations take `100ms`, `1s`, `5m`, `1h` or a number of
seconds. Unknown keys are errors.
"""

#: Shapes of well-known annotated types, recognised by their JSON Schema pattern, with a short name.
_PATTERN_NAMES = {r"^\d+(\.\d+)?(ms|s|m|h)?$": "duration"}
_REF = "#/$defs/"


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "top"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


class _Walker:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.defs: dict[str, dict[str, Any]] = doc.get("$defs", {})
        self.root = doc
        self.paths: dict[str, list[str]] = {}  # def name -> paths where it is used, first one is its section
        self.order: list[str] = []
        self.quals: dict[str, str] = {}

    # -- which models appear where -----------------------------------------------------------------------
    def refs(self, node: Any, path: str) -> list[tuple[str, str]]:
        """(def name, path) of every model referenced by a property schema, with ``[]`` for list items."""
        found: list[tuple[str, str]] = []
        if not isinstance(node, dict):
            return found
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            found.append((ref[len(_REF) :], path))
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                found += self.refs(sub, path)
        if "items" in node:
            found += self.refs(node["items"], path + "[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += self.refs(node["additionalProperties"], path + ".<name>")
        return found

    def label(self, name: str) -> str:
        """What tells a model apart among the members of a union: its source's ``driver``, else its title."""
        model = self.defs[name]
        source = model.get("properties", {}).get("source", {}).get("$ref", "")
        driver = self.defs.get(source[len(_REF) :], {}).get("properties", {}).get("driver", {})
        if "const" in driver:
            return f"driver: {driver['const']}"
        if len(driver.get("enum", ())) == 1:
            return f"driver: {driver['enum'][0]}"
        return str(model.get("title", name))

    def walk(self) -> None:
        queue: deque[tuple[dict[str, Any], str, str]] = deque([(self.root, "", "")])
        while queue:
            model, prefix, qual = queue.popleft()
            for key, prop in model.get("properties", {}).items():
                found = self.refs(prop, f"{prefix}{key}")
                union = len({name for name, _ in found}) > 1
                for name, path in found:
                    q = self.label(name) if union else qual
                    shown = f"{path} ({q})" if q else path
                    if name not in self.paths:
                        self.paths[name] = []
                        self.order.append(name)
                        self.quals[name] = q
                        queue.append((self.defs[name], path + ".", q))
                    self.paths[name].append(shown)

    # -- one property --------------------------------------------------------------------------------------
    def link(self, ref: str) -> str:
        name = ref[len(_REF) :]
        first = self.paths.get(name, [name])[0]
        return f"[{first}](#{_anchor(first)})"

    def type_of(self, node: dict[str, Any]) -> str:
        if "$ref" in node:
            return "mapping, see " + self.link(node["$ref"])
        if "const" in node:
            return f"`{json.dumps(node['const'])}`"
        if "enum" in node:
            return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
        for key in ("anyOf", "oneOf"):
            if key in node:
                subs = [s for s in node[key] if s.get("type") != "null"]
                named = {_PATTERN_NAMES.get(s.get("pattern", "")) for s in subs} - {None}
                if named:
                    return named.pop()  # type: ignore[return-value]
                if len(subs) > 1 and all("$ref" in sub for sub in subs):
                    return "mapping, one of " + ", ".join(self.link(sub["$ref"]) for sub in subs)
                return " or ".join(dict.fromkeys(self.type_of(s) for s in subs))
        kind = node.get("type")
        if kind == "array":
            text = "list of " + self.type_of(node.get("items", {}))
        elif kind == "string" and node.get("format") == "password":
            text = "secret string"
        elif kind == "object" and "additionalProperties" in node:
            text = (
                "mapping of name to " + self.type_of(node["additionalProperties"])
                if isinstance(node["additionalProperties"], dict)
                else "mapping"
            )
        elif isinstance(kind, list):
            text = " or ".join(kind)
        else:
            text = {
                "integer": "integer",
                "number": "number",
                "string": "string",
                "boolean": "boolean",
                "object": "mapping",
            }.get(str(kind), "any")
        limits = []
        for key, sign in (
            ("minimum", "≥"),
            ("exclusiveMinimum", ">"),
            ("maximum", "≤"),
            ("exclusiveMaximum", "<"),
            ("minLength", "length ≥"),
            ("maxLength", "length ≤"),
            ("minItems", "items ≥"),
            ("maxItems", "items ≤"),
        ):
            if key in node:
                limits.append(f"{sign} {node[key]:g}" if isinstance(node[key], float) else f"{sign} {node[key]}")
        return text + (f" ({', '.join(limits)})" if limits else "")

    def default_of(self, node: dict[str, Any], required: bool) -> str:
        if required:
            return "**required**"
        if "default" not in node:
            return "its defaults" if self.refs(node, "") else ""
        value = node["default"]
        if value is None:
            return "—"
        if self.type_of(node) == "duration" and isinstance(value, (int, float)):
            return f"`{value:g}s`"
        return f"`{json.dumps(value, ensure_ascii=False)}`"

    def description_of(self, node: dict[str, Any]) -> str:
        text = node.get("description", "")
        if not text:
            for name, _ in self.refs(node, ""):
                text = self.defs[name].get("description", "")
                break
        if node.get("examples"):
            text += " Examples: " + ", ".join(f"`{e}`" for e in node["examples"]) + "."
        return _cell(text)

    # -- the page ----------------------------------------------------------------------------------------
    def table(self, model: dict[str, Any]) -> list[str]:
        required = set(model.get("required", ()))
        rows = ["| key | type | default | description |", "|---|---|---|---|"]
        props = model.get("properties", {})
        keys = sorted(props, key=lambda k: k != "driver")  # the key that selects a source's model first
        for key in keys:
            prop = props[key]
            rows.append(
                f"| `{key}` | {_cell(self.type_of(prop))} | {_cell(self.default_of(prop, key in required))} "
                f"| {self.description_of(prop)} |"
            )
        return rows

    def section(self, name: str) -> list[str]:
        model = self.defs[name]
        first, *others = self.paths[name]
        out = [
            "",
            f'<a id="{_anchor(first)}"></a>',
            f"## `{first.split(' (')[0]}`" + (f" ({first.split(' (', 1)[1]}" if " (" in first else ""),
            "",
        ]
        if model.get("description"):
            out += [_cell(model["description"]), ""]
        if others:
            out += ["Also used at: " + ", ".join(f"`{p}`" for p in dict.fromkeys(others)) + ".", ""]
        return out + self.table(model)

    def sections(self) -> list[str]:
        """Models in page order: by top-level key, then per union member (driver), then nearest first."""
        top = list(self.root.get("properties", {}))

        def key(name: str) -> tuple[int, str, int]:
            head = re.split(r"[.\[ ]", self.paths[name][0], maxsplit=1)[0]
            return (top.index(head) if head in top else len(top), self.quals[name], self.order.index(name))

        return sorted(self.order, key=key)

    def markdown(self) -> str:
        self.walk()
        lines = [HEADER, '<a id="top"></a>', "## Top level", ""]
        if self.root.get("description"):
            lines += [_cell(self.root["description"]), ""]
        lines += self.table(self.root)
        for name in self.sections():
            lines += self.section(name)
        return "\n".join(lines).rstrip() + "\n"


def markdown() -> str:
    """The whole reference page as Markdown (deterministic: same models, same text)."""
    return _Walker(schema()).markdown()


def cmd_markdown(output: str = "docs/config.md") -> int:
    """Write the reference to ``output`` (``-`` for stdout); return 0, or 1 when the file cannot be written."""
    text = markdown()
    if output == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(
            f"cannot write {output}: {exc.strerror or exc} (run it from the project folder, or pass -o FILE)",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {output}", file=sys.stderr)
    return 0
