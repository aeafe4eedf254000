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


def _duplicate_keys(node: yaml.Node, path: tuple = ()) -> Iterator[tuple[tuple, yaml.Node]]:
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            if key_node.value in seen:
                yield path + (key_node.value,), key_node
            seen.add(key_node.value)
            yield from _duplicate_keys(value_node, path + (key_node.value,))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, path + (index,))


def load_yaml(path: Path, label: str) -> YamlDocument:
    """Parse one YAML file; syntax errors and duplicate keys become ConfigError lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{label}{line}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: YAML error: {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        data, root = {}, None
    if not isinstance(data, dict):
        line = f":{root.start_mark.line + 1}" if root is not None else ""
        raise ConfigError(f"{label}{line}: expected a mapping of keys at the top level")
    problems = [
        f"{label}:{key_node.start_mark.line + 1}: {format_key_path(dup)}: duplicate key"
        for dup, key_node in _duplicate_keys(root)
    ] if root is not None else []
    if problems:
        raise ConfigError(problems)
    return YamlDocument(label=label, data=data, root=root)


def plain(value: Any) -> Any:
    """Data as YAML would print it (for `dsas config`)."""
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False)
