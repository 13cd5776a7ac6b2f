"""settings.yaml as plain values: the line of every key path, `${NAME}` expansion, problems the YAML has."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from recycle_engine.errors import ConfigError, ConfigProblem

__all__ = ["INVALID", "EnvText", "Source", "Unset", "YamlMap", "join", "kind", "parent", "read_yaml"]

INVALID: Final = object()  # a value the reader could not read; it has said why

_ENV_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")  # "$${" writes a literal "${"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ONLY_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_LAST_STEP = re.compile(r"(?:\.[^.\[\]]+|\[\d+\])$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class EnvText(str):
    """Text that used `${NAME}`: may be a secret, so messages never show it.

    `only_ref`: the text was exactly one `${NAME}` (how secrets must be written); `unset`: a variable it
    names is missing (reported once by the reader; `path` lets a credential defer that to its command).
    """

    path: str
    only_ref: bool
    unset: bool


class YamlMap(dict[str, Any]):
    """A mapping of the file, knowing its own key path (for the key checks of its section)."""

    path: str


@dataclass(frozen=True)
class Unset:
    """A `${NAME}` whose variable is missing, where it is written."""

    name: str
    path: str
    line: int | None


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parent(path: str) -> str:
    match = _LAST_STEP.search(path)
    return path[: match.start()] if match else ""


def kind(value: object) -> str:
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


class Source:
    """The file read into plain values: lines of key paths, problems found, variables missing."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.lines: dict[str, int] = {}
        self.problems: list[ConfigProblem] = []
        self.unset: list[Unset] = []

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
            path = parent(path)

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
    ) -> YamlMap:
        result = YamlMap()
        result.path = path
        written: set[str] = set()
        for key_node, value_node, merged in self._pairs(node):
            if not isinstance(key_node, yaml.ScalarNode):
                self.add(path, "a key must be a plain name")
                continue
            # The key's text as written: `0002:` or `4-6:` stay names, never YAML numbers.
            key = str(key_node.value)
            child = join(path, key)
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

    def _expand(self, text: str, path: str) -> str:
        if "${" not in text:
            return text
        unset = False
        used_env = False

        def replace(match: re.Match[str]) -> str:
            nonlocal unset, used_env
            name = match.group(1)
            if name is None:
                return "${"
            used_env = True
            if not _ENV_NAME.fullmatch(name):
                unset = True
                self.add(path, f"'${{{name}}}' does not name an environment variable (letters, digits, _)")
                return ""
            if name not in self.env:
                unset = True
                self.unset.append(Unset(name, path, self.line_of(path)))
                return ""
            return self.env[name]

        result = _ENV_REF.sub(replace, text)
        if not used_env:
            return result
        marked = EnvText(result)
        marked.path, marked.unset = path, unset
        marked.only_ref = bool(_ONLY_ENV_REF.fullmatch(text))
        return marked


_BAD_START = re.compile(r"found character '(.+)' that cannot start any token")
_UNDEFINED_ALIAS = re.compile(r"found undefined alias '(.+)'")
_FLOW_CLOSERS: Final = {"flow mapping": ("{", "}"), "flow sequence": ("[", "]")}


def explain_yaml(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's parser terms in plain words, for someone editing the file by hand."""
    problem, context = exc.problem or "", exc.context or ""
    since = f" on line {exc.context_mark.line + 1}" if exc.context_mark else ""
    for name, (opener, closer) in _FLOW_CLOSERS.items():
        if name in context:
            return (
                f"the '{opener}' opened{since} is not closed with '{closer}' before this point, "
                "or two of its entries have no ',' between them"
            )
    if r"'\t'" in problem:
        return "a tab character; indent with spaces only"
    if match := _BAD_START.search(problem):
        return f"a value cannot start with {match.group(1)!r}; put the value in quotes"
    if "mapping values are not allowed" in problem:
        return (
            "a ':' where no value can start: put quotes around text that contains ': ', "
            "or indent this line like the keys beside it"
        )
    if "could not find expected ':'" in problem:
        return f"the key{since} has no ':' after it; write key: value"
    if "quoted scalar" in context:
        return f"the quote opened{since} is never closed"
    if "expected <block end>" in problem:
        return (
            f"this line is not indented like the entries it follows (the block starting{since}); "
            "line it up with them, using spaces"
        )
    if match := _UNDEFINED_ALIAS.search(problem):
        return f"'*{match.group(1)}' refers to an anchor '&{match.group(1)}' that is not defined before it"
    if "end of stream" in problem:
        return f"the file ends inside a value that started{since}"
    return " ".join(part for part in (problem, f"({context}{since})" if context else "") if part)


def read_yaml(text: str, source: Source) -> Any:
    """The document as plain values (None when empty); raises ConfigError when it is not YAML at all."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        problem = ConfigProblem(source.source, f"not valid YAML: {explain_yaml(exc)}", line, column)
        raise ConfigError([problem], source=source.source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=source.source) from None
    try:
        return None if node is None else source.tree(loader, node, "", frozenset())
    finally:
        loader.dispose()
