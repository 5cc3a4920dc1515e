"""YAML documents as plain data with a line for every path, and typed readers that collect issues.

Scalars follow the YAML 1.2 core schema rather than PyYAML's 1.1 one: only `true`/`false` are
booleans (so the country code `NO` stays text), dates stay text, and only decimal numbers are
numbers. Any other tag is refused.
"""

import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from policies.errors import PolicyError, PolicyIssue
from policies.units import parse_byte_size, parse_date, parse_duration

E = TypeVar("E", bound=StrEnum)

_TAG = "tag:yaml.org,2002:"
_TEXT_TAGS = {f"{_TAG}{name}" for name in ("str", "timestamp", "bool", "int", "float")}
_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_MAX_INT_DIGITS = 30
_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]+")
NONBLANK = re.compile(r".*\S.*", re.DOTALL)
_MAX_NODES = 50_000
_MAX_DEPTH = 40


def child(path: str, key: str | int) -> str:
    """The path of a mapping key or list index below `path`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def parent(path: str) -> str:
    """The path one level above `path` (the root is the empty path)."""
    return path[: max(path.rfind("."), path.rfind("["), 0)]


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Builder:
    """Turns a composed YAML node tree into plain data, recording each path's line."""

    def __init__(self) -> None:
        self.lines: dict[str, int] = {"": 1}
        self.issues: list[PolicyIssue] = []
        self.count = 0

    def build(self, node: Node, path: str, depth: int = 0) -> object:
        self.count += 1
        if depth > _MAX_DEPTH or self.count > _MAX_NODES:
            raise PolicyError([PolicyIssue(path, _line(node), "the document is too large")])
        self.lines.setdefault(path, _line(node))
        if isinstance(node, MappingNode) and node.tag == f"{_TAG}map":
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode) and node.tag == f"{_TAG}seq":
            return [
                self.build(item, child(path, i), depth + 1) for i, item in enumerate(node.value)
            ]
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        self._refuse(node, path)
        return None

    def _mapping(self, node: MappingNode, path: str, depth: int) -> dict[str, object]:
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self._issue(path, key_node, "mapping keys must be plain text")
                continue
            key = str(key_node.value)
            here = child(path, key)
            if key in result:
                self._issue(here, key_node, f"duplicate key '{key}'")
                continue
            self.lines[here] = _line(key_node)
            result[key] = self.build(value_node, here, depth + 1)
        return result

    def _scalar(self, node: ScalarNode, path: str) -> object:
        tag, value = node.tag, str(node.value)
        if tag == f"{_TAG}null":
            return None
        if tag == f"{_TAG}bool" and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if tag == f"{_TAG}int" and _INT.fullmatch(value):
            if len(value) > _MAX_INT_DIGITS:
                self._issue(path, node, f"integer with more than {_MAX_INT_DIGITS} digits")
                return None
            return int(value)
        if tag == f"{_TAG}float" and _FLOAT.fullmatch(value):
            return float(value)
        if tag not in _TEXT_TAGS:
            self._refuse(node, path)
        return value

    def _refuse(self, node: Node, path: str) -> None:
        self._issue(path, node, f"unsupported YAML tag '{node.tag}'")

    def _issue(self, path: str, node: Node, message: str) -> None:
        self.issues.append(PolicyIssue(path, _line(node), message))


def _syntax_issue(exc: yaml.YAMLError) -> PolicyIssue:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    text = ": ".join(part for part in parts if part) or str(exc)
    line = int(mark.line) + 1 if mark is not None else None
    return PolicyIssue("", line, f"YAML syntax error: {text}")


def read_document(text: str) -> "tuple[object, Reader]":
    """Parse one YAML document; raise PolicyError on syntax errors or an empty document."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise PolicyError([_syntax_issue(exc)]) from None
    if root is None:
        raise PolicyError([PolicyIssue("", 1, "the document is empty")])
    builder = _Builder()
    data = builder.build(root, "")
    return data, Reader(builder.lines, builder.issues)


def describe(value: object) -> str:
    """Name the YAML kind of a value for error messages."""
    kinds = [(bool, "true/false"), (int, "a number"), (float, "a number"), (str, "text")]
    kinds += [(list, "a list"), (dict, "a mapping"), (type(None), "nothing")]
    return next(name for kind, name in kinds if isinstance(value, kind))


def _unknown_key(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(sorted(allowed))}"
    return f"unknown key '{key}'; {hint}"


@dataclass
class Reader:
    """Typed readers over plain data that record issues (with lines) instead of raising."""

    lines: dict[str, int]
    issues: list[PolicyIssue] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        """Record an issue at `path`, on the line of the nearest recorded ancestor."""
        self.issues.append(PolicyIssue(path, self.line(path), message))

    def line(self, path: str) -> int | None:
        """The 1-based line of `path`, or of its nearest ancestor that has one."""
        while path not in self.lines and path:
            path = parent(path)
        return self.lines.get(path)

    def mapping(
        self, value: object, path: str, required: Sequence[str] = (), optional: Sequence[str] = ()
    ) -> dict[str, object]:
        """A mapping with only the allowed keys, every required one present and not null."""
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {describe(value)}")
            return {}
        for key, item in value.items():
            if key not in (*required, *optional):
                self.error(child(path, key), _unknown_key(key, (*required, *optional)))
            elif item is None:
                self.error(child(path, key), f"'{key}' has no value; give one or remove the key")
        for key in required:
            if key not in value:
                self.error(child(path, key), f"'{key}' is required")
        return value

    def items(self, value: object, path: str) -> Iterator[tuple[str, object]]:
        """The (path, item) pairs of a non-empty list; nothing when absent (None)."""
        if value is None:
            return
        if not isinstance(value, list):
            self.error(path, f"must be a list, not {describe(value)}")
            return
        if not value:
            self.error(path, "must not be empty")
        for index, item in enumerate(value):
            yield child(path, index), item

    def table(self, value: object, path: str) -> dict[str, object]:
        """A mapping with keys chosen by the author (names of lists, agreements, forms)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {describe(value)}")
            return {}
        return value

    def text(
        self, value: object, path: str, pattern: re.Pattern[str] = NONBLANK, expected: str = ""
    ) -> str | None:
        """Text matching `pattern` (described as `expected`); None when absent or invalid."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.error(path, f"must be text, not {describe(value)}")
            return None
        if not pattern.fullmatch(value):
            self.error(path, f"{value!r} is not {expected or 'valid text'}")
            return None
        return value

    def integer(self, value: object, path: str) -> int | None:
        """A whole number of at least 1; None when absent or invalid."""
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.error(path, f"must be a whole number of at least 1, not {value!r}")
            return None
        return value

    def boolean(self, value: object, path: str) -> bool:
        """true or false; false when absent or invalid."""
        if value is None:
            return False
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, not {value!r}")
            return False
        return value

    def choice(self, kind: type[E], value: object, path: str, what: str) -> E | None:
        """A member of the vocabulary `kind`; the error lists the allowed values."""
        if value is None:
            return None
        allowed = [member.value for member in kind]
        if value not in allowed:
            self.error(path, f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
            return None
        return kind(value)

    def duration(self, value: object, path: str) -> timedelta | None:
        """A duration such as `15m` or `90d`; None when absent or invalid."""
        text = self.text(value, path)
        try:
            return None if text is None else parse_duration(text)
        except ValueError as exc:
            self.error(path, str(exc))
            return None

    def byte_size(self, value: object, path: str) -> int | None:
        """A byte count, plain or with a unit such as `400GB`; None when absent or invalid."""
        if value is None:
            return None
        if not isinstance(value, (int, str)):
            self.error(path, f"must be a byte size such as 400GB, not {describe(value)}")
            return None
        try:
            return parse_byte_size(value)
        except ValueError as exc:
            self.error(path, str(exc))
            return None

    def day(self, value: object, path: str) -> date | None:
        """A calendar date written YYYY-MM-DD; None when absent or invalid."""
        text = self.text(value, path)
        try:
            return None if text is None else parse_date(text)
        except ValueError as exc:
            self.error(path, str(exc))
            return None
