"""Bounds on config input: what the loader refuses before it expands or parses too much.

A config file is read up to :data:`MAX_FILE_BYTES`; flow brackets nested deeper than :data:`MAX_DEPTH` are
refused before the YAML scanner runs (its cost grows with the square of the flow depth); the composed node
graph is sized before anything expands it, so an alias bomb (a "billion laughs": 9 levels of 9 aliases in a
few hundred bytes) is refused at the line of the first anchor that expands past :data:`MAX_ALIAS_VALUES`,
and so are aliases inside their own anchor and nesting deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.config.errors import ConfigError, ConfigIssue

#: Largest config file read, in bytes (a plant's config with thousands of tags is about a megabyte).
MAX_FILE_BYTES = 16 * 1024 * 1024
#: Values that YAML aliases (``*anchor``, ``<<: *anchor``) may add to what the file spells out. Reusing a
#: tag list across assets stays far below; a "billion laughs" (9 levels of 9 aliases) is refused at once.
MAX_ALIAS_VALUES = 250_000
#: Deepest nesting of mappings and lists (a config needs about 6).
MAX_DEPTH = 64
_FLOW_CHARS = re.compile(r"""[\[\]{}\n'"#\\]""")


def read_bounded(file: str) -> str:
    """The file's text; a :class:`ConfigError` when it is larger than :data:`MAX_FILE_BYTES` (reads at most
    that much, so ``/dev/zero`` or a runaway pipe cannot exhaust memory)."""
    chunks: list[bytes] = []
    size = 0
    with open(file, "rb") as f:  # in chunks: read(n) would reserve n bytes even for a 1 KB file
        while size <= MAX_FILE_BYTES and (chunk := f.read(64 * 1024)):
            chunks.append(chunk)
            size += len(chunk)
    data = b"".join(chunks)
    if len(data) > MAX_FILE_BYTES:
        problem = f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; is it really a config file?"
        raise ConfigError([ConfigIssue(file, None, None, "", problem)])
    return data.decode("utf-8")


def flow_depth(file: str, text: str) -> ConfigIssue | None:
    """Brackets (``[``, ``{``) nested deeper than :data:`MAX_DEPTH`, found before the YAML scanner runs (its
    cost grows with the square of the flow depth: 3000 levels take seconds). Quoted text and comments are
    skipped; a stray bracket in a plain scalar only counts as one level."""
    depth, line, quote, skip_to = 0, 1, "", -1
    for m in _FLOW_CHARS.finditer(text):
        i, c = m.start(), m.group()
        if i < skip_to:
            continue
        if c == "\n":
            line += 1
        elif quote:
            if c == "\\" and quote == '"':
                skip_to = i + 2
            elif c == quote:
                quote = ""
        elif c in "'\"" and (i == 0 or text[i - 1] in " \t\n[{,:"):
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n"):
            skip_to = text.find("\n", i)  # the newline itself is still counted
            if skip_to < 0:
                break
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return ConfigIssue(file, line, None, "", f"refused: nested deeper than {MAX_DEPTH} levels")
        elif c in "]}":
            depth = max(0, depth - 1)
    return None


def _children(node: Any) -> list[Any]:
    kind = node.id  # a ruamel.yaml node (this module does not import ruamel: the libyaml path needs none of it)
    if kind == "mapping":
        return [n for pair in node.value for n in pair]
    if kind == "sequence":
        return list(node.value)
    return []


def graph_bounds(file: str, root: Any) -> list[ConfigIssue]:
    """Refuse, before anything expands them, documents whose aliases add more than :data:`MAX_ALIAS_VALUES`
    values, that nest deeper than :data:`MAX_DEPTH`, or whose aliases refer to themselves.

    Works on the composed node graph, where an alias is the anchored node itself: each node's expanded size
    and height are computed once (post-order, no recursion), so the check costs the size of the file.
    """
    if root is None:
        return []
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in size:
            continue
        kids = _children(node)
        if not done:
            open_.add(key)
            stack.append((node, True))
            for kid in kids:
                if id(kid) in open_:
                    return [_bound_issue(file, kid, "an alias refers to the value that contains it (a loop)")]
                if id(kid) not in size:
                    stack.append((kid, False))
            continue
        open_.discard(key)
        size[key] = 1 + sum(size[id(k)] for k in kids)
        height[key] = 1 + max((height[id(k)] for k in kids), default=0)
        if height[key] > MAX_DEPTH:
            return [_bound_issue(file, node, f"nested deeper than {MAX_DEPTH} levels")]
        if size[key] > MAX_ALIAS_VALUES:  # only then count what the file spells out below it
            added = size[key] - _unique(node)
            if added > MAX_ALIAS_VALUES:
                return [_bound_issue(file, node, f"its aliases expand to {_count(size[key])} values, more than "
                                     f"{MAX_ALIAS_VALUES:,} beyond what the file spells out (a YAML alias bomb?)")]
    return []


def _unique(root: Any) -> int:
    """Distinct nodes below ``root`` (an alias counted once)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(_children(node))
    return len(seen)


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**9 else f"about 10^{len(str(n)) - 1}"


def _bound_issue(file: str, node: Any, problem: str) -> ConfigIssue:
    mark = node.start_mark
    return ConfigIssue(file, mark.line + 1, mark.column + 1, "", f"refused: {problem}")
