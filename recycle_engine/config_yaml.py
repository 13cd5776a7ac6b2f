"""The settings.yaml reader: YAML to plain values with the line of every key path; `${NAME}` expansion."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from recycle_engine.errors import ConfigError, ConfigProblem
from recycle_engine.settings import GatewayType

__all__ = ["INVALID", "REQUIRED", "UNRESOLVED", "_Reader", "_compose", "_join", "_kind", "_parent"]


class _Mark(enum.Enum):
    REQUIRED = "required"  # a Key default: the key must be written
    INVALID = "invalid"  # a converter has already reported why
    UNRESOLVED = "unresolved"  # a ${NAME} whose variable is missing; reported once, never re-checked


REQUIRED: Final = _Mark.REQUIRED
INVALID: Final = _Mark.INVALID
UNRESOLVED: Final = _Mark.UNRESOLVED

_ENV_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")  # "$${" writes a literal "${"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ONLY_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_LAST_STEP = re.compile(r"(?:\.[^.\[\]]+|\[\d+\])$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _parent(path: str) -> str:
    match = _LAST_STEP.search(path)
    return path[: match.start()] if match else ""


def _kind(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "text" if isinstance(value, str) else type(value).__name__


class _Reader:
    """Reads the YAML tree and collects every problem with its line; knows which values the environment gave."""

    def __init__(self, source: str, base_dir: Path, env: Mapping[str, str]) -> None:
        self.source = source
        self.base_dir = base_dir
        self.env = env
        self.lines: dict[str, int] = {}
        self.problems: list[ConfigProblem] = []
        self.from_env: set[str] = set()  # paths whose text used ${...}: never echoed in messages
        self.env_only: set[str] = set()  # paths whose text is exactly one ${NAME}: allowed for secrets
        self.ids: dict[str, dict[str, str]] = {}  # list path -> id -> path of its `id` key
        self.gateway_types: dict[str, GatewayType | None] = {}
        self.recycle_owner: dict[str, str] = {}  # gateway id -> where a recycle profile first covers it

    def add(self, path: str, message: str) -> None:
        self.problems.append(
            ConfigProblem(path=path or self.source, message=message, line=self.line_of(path))
        )

    def line_of(self, path: str) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = _parent(path)

    def show(self, path: str, value: object) -> str:
        """A value for a message; anything that came from the environment may be a secret and is not shown."""
        return "the value from the environment" if path in self.from_env else repr(value)

    def id_at(self, item_path: str, list_path: str) -> str:
        return next((i for i, p in self.ids.get(list_path, {}).items() if _parent(p) == item_path), item_path)

    # YAML nodes -> plain values, recording the line of every key path on the way.

    def tree(self, loader: yaml.SafeLoader, node: yaml.Node, path: str, seen: frozenset[int]) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            self.add(path, "an alias refers to itself")
            return INVALID
        seen = seen | {id(node)}
        if isinstance(node, yaml.MappingNode):
            return self._mapping(loader, node, path, seen)
        if isinstance(node, yaml.SequenceNode):
            return [self.tree(loader, item, f"{path}[{i}]", seen) for i, item in enumerate(node.value)]
        try:
            value = loader.construct_object(node)
        except yaml.YAMLError as exc:
            self.add(path, f"cannot read this value: {getattr(exc, 'problem', exc)}")
            return INVALID
        return self._expand(value, path) if isinstance(value, str) else value

    def _mapping(
        self, loader: yaml.SafeLoader, node: yaml.MappingNode, path: str, seen: frozenset[int]
    ) -> dict[str, Any]:
        result: dict[str, Any] = {}
        written: set[str] = set()
        for key_node, value_node, merged in self._pairs(node):
            if not isinstance(key_node, yaml.ScalarNode):
                self.add(path, "a key must be a plain name")
                continue
            # The key's text as written: `0002:` or `4-6:` stay names, never YAML numbers.
            key = str(key_node.value)
            child = _join(path, key)
            first_line = self.lines.get(child)
            self.lines[child] = key_node.start_mark.line + 1
            if not merged and key in written:
                self.add(child, f"key {key!r} is written twice in this mapping (first on line {first_line})")
            if not merged:
                written.add(key)
            result[key] = self.tree(loader, value_node, child, seen)
        return result

    def _pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node, bool]]:
        """Key/value pairs with `<<: *anchor` merges first, so keys written here override them."""
        merged: list[tuple[yaml.Node, yaml.Node, bool]] = []
        own: list[tuple[yaml.Node, yaml.Node, bool]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node, False))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if isinstance(source, yaml.MappingNode):
                    merged.extend((k, v, True) for k, v, _ in self._pairs(source))
        return merged + own

    def _expand(self, text: str, path: str) -> Any:
        if "${" not in text:
            return text
        missing: list[str] = []
        used_env = False

        def replace(match: re.Match[str]) -> str:
            nonlocal used_env
            name = match.group(1)
            if name is None:
                return "${"
            used_env = True
            if not _ENV_NAME.fullmatch(name):
                missing.append(name)
                self.add(path, f"'${{{name}}}' does not name an environment variable (letters, digits, _)")
                return ""
            if name not in self.env:
                missing.append(name)
                self.add(path, f"environment variable {name} is not set")
                return ""
            return self.env[name]

        result = _ENV_REF.sub(replace, text)
        if used_env:
            self.from_env.add(path)
        if _ONLY_ENV_REF.fullmatch(text):
            self.env_only.add(path)
        return UNRESOLVED if missing else result


def _compose(text: str, source: str) -> tuple[yaml.SafeLoader, yaml.Node | None]:
    loader = yaml.SafeLoader(text)
    try:
        return loader, loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = ConfigProblem(source, f"not valid YAML: {exc.problem or exc.context}", line)
        raise ConfigError([problem], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=source) from None
