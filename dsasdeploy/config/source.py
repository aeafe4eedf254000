"""YAML documents that remember where each key came from (file and line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import yaml

from ..errors import ConfigError

KeyPath = Sequence[Union[str, int]]


def format_key_path(path: KeyPath) -> str:
    """('hosts', 3, 'roles') -> 'hosts[3].roles'."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML mapping plus its node tree, for line numbers in messages."""

    label: str  # how messages name the file, e.g. 'stages/production.yaml'
    data: dict
    root: Optional[yaml.Node]

    def node_at(self, path: KeyPath) -> tuple[Optional[yaml.Node], int]:
        """The deepest node reachable along `path`, and how many parts were matched."""
        node = self.root
        matched = 0
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            node, matched = child, matched + 1
        return node, matched

    def line_of(self, path: KeyPath, *, key: bool = False) -> Optional[int]:
        """1-based line of the value at `path` (of its key, with key=True)."""
        if key and path:
            parent, matched = self.node_at(path[:-1])
            if matched == len(path) - 1 and isinstance(parent, yaml.MappingNode):
                for key_node, _ in parent.value:
                    if key_node.value == path[-1]:
                        return key_node.start_mark.line + 1
        node, _ = self.node_at(path)
        return node.start_mark.line + 1 if node is not None else None

    def where(self, path: KeyPath, *, key: bool = False) -> str:
        """'stages/lab.yaml:12' (or just the label when no line is known)."""
        line = self.line_of(path, key=key)
        return f"{self.label}:{line}" if line else self.label


def _child(node: Optional[yaml.Node], part: Union[str, int]) -> Optional[yaml.Node]:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key_node, value_node in node.value:
            if key_node.value == part:
                return value_node
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        if 0 <= part < len(node.value):
            return node.value[part]
    return None


MAX_BYTES = 1024 * 1024  # a configuration file, not a data set
MAX_DEPTH = 64  # mappings and lists nested deeper than this are a mistake (or an attack)
MAX_NODES = 100_000  # after expanding aliases: a billion-laughs file stops here, at once
MERGE_TAG = "tag:yaml.org,2002:merge"


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting and alias bombs while composing, before any expansion."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._weights: dict[int, int] = {}  # id(node) -> size of the node once aliases are expanded

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)  # a node already weighed
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        weight = 1 + sum(self._weights.get(id(child), 1) for child in children)
        if weight > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES} values once aliases are "
                                              f"expanded (an alias bomb?)", mark)
        self._weights[id(node)] = weight
        return node


def _duplicate_keys(node: yaml.Node, path: tuple = (), seen_nodes: Optional[set] = None
                    ) -> Iterator[tuple[tuple, yaml.Node]]:
    """Keys given twice in one mapping, on the composed tree (before merge keys are applied:
    `<<: *base` followed by overrides is not a duplicate). Aliased nodes are visited once."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            if key_node.tag != MERGE_TAG:
                if key_node.value in seen:
                    yield path + (key_node.value,), key_node
                seen.add(key_node.value)
            yield from _duplicate_keys(value_node, path + (key_node.value,), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, path + (index,), seen_nodes)


def _nul_strings(data: Any, path: tuple = ()) -> Iterator[tuple]:
    """Key paths of strings holding a NUL character (written as "\\0" in a quoted string)."""
    if isinstance(data, str) and "\0" in data:
        yield path
    elif isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and "\0" in key:
                yield path + (key,)
            yield from _nul_strings(value, path + (key,))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from _nul_strings(item, path + (index,))


def read_text(path: Path, label: str) -> str:
    """The file as text, within MAX_BYTES, UTF-8, without NUL bytes; else ConfigError."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{label}: larger than {MAX_BYTES // 1024} KiB; not a configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{label}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
                          ) from None
    if "\0" in text:
        raise ConfigError(f"{label}:{text[:text.index(chr(0))].count(chr(10)) + 1}: contains a NUL byte")
    return text


def load_yaml(path: Path, label: str) -> YamlDocument:
    """Parse one YAML file within limits; syntax errors, duplicate keys and NULs become ConfigError lines."""
    loader = _LimitedLoader(read_text(path, label))
    try:
        root = loader.get_single_node()
        duplicates = list(_duplicate_keys(root)) if root is not None else []
        if duplicates:
            raise ConfigError([f"{label}:{key_node.start_mark.line + 1}: {format_key_path(dup)}: duplicate key"
                               for dup, key_node in duplicates])
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{label}{line}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: YAML error: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    if data is None:
        data, root = {}, None
    if not isinstance(data, dict):
        line = f":{root.start_mark.line + 1}" if root is not None else ""
        raise ConfigError(f"{label}{line}: expected a mapping of keys at the top level")
    document = YamlDocument(label=label, data=data, root=root)
    problems = [f"{document.where(path)}: {format_key_path(path)}: contains a NUL character"
                for path in _nul_strings(data)]
    if problems:
        raise ConfigError(problems)
    return document


def plain(value: Any) -> Any:
    """Data as YAML would print it (for `dsas config`)."""
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False)
