"""The one strict YAML loader for every file lrwa reads, and the shortening of quoted values.

`load_yaml_mapping(path, what)` reads a config file, a run folder's config.yaml or a study
file. On top of `yaml.SafeLoader` (no tags that build objects) it refuses:
- a key repeated in one mapping, at any depth: plain YAML keeps the last silently, so a
  setting the user wrote could be dropped without a word;
- aliases that expand past `MAX_NODES` nodes ("billion laughs"), and an alias to the
  collection that contains it: the parsed object would be small, but every reader that
  walks it (a repr, a comparison, a JSON dump) would walk the whole expansion;
- files over `MAX_BYTES`, nesting deeper than Python's recursion allows, several
  documents in one file, and any document that is not a mapping.
Every refusal is one LrwaError line; values quoted in it go through `shown`, which never
formats more than `SHOWN_CHARACTERS` characters, however large or deep the value is.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from lrwa.errors import LrwaError

# Config and study files are a few kilobytes and a few hundred nodes.
MAX_BYTES = 1 << 20
MAX_NODES = 100_000
SHOWN_CHARACTERS = 80

_REPR = reprlib.Repr()  # Python 3.11's Repr takes no arguments; its limits are attributes
_REPR.maxlevel = 3
_REPR.maxtuple = _REPR.maxlist = _REPR.maxarray = _REPR.maxdict = 4
_REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 4
_REPR.maxstring = _REPR.maxother = SHOWN_CHARACTERS - 20
_REPR.maxlong = 40


def shown(value: Any) -> str:
    """`repr(value)` for a message: at most SHOWN_CHARACTERS characters, never walking it all.

    reprlib looks at a bounded number of items and levels, so a value that aliases a
    10^9-item expansion is shown in microseconds.
    """
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for conversion to text
        text = (f"<int of {value.bit_length()} bits>" if isinstance(value, int)
                else f"<{type(value).__name__}>")
    if len(text) > SHOWN_CHARACTERS:
        text = text[:SHOWN_CHARACTERS - 3] + "..."
    return text


def clipped(text: str) -> str:
    """`text` itself (no quotes) cut to SHOWN_CHARACTERS characters."""
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS - 3] + "..."


class YamlRefused(yaml.YAMLError):
    """A document that parses but that lrwa will not read (the reason, with its line)."""

    def __init__(self, reason: str, mark: yaml.Mark | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.problem_mark = mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that counts expanded nodes, and refuses self-aliases and repeated keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._expanded = 0
        self._finished: set[int] = set()
        self._sizes: dict[int, int] = {}

    def _count(self, nodes: int, mark: yaml.Mark | None) -> None:
        self._expanded += nodes
        if self._expanded > MAX_NODES:
            raise YamlRefused(f"expands to more than {MAX_NODES} values (aliases that "
                              "multiply, or a file far larger than a config)", mark)

    def _size(self, node: yaml.Node) -> int:
        """Nodes in `node` with every alias expanded; the graph is acyclic (self-aliases are
        refused), so memoising by identity makes this linear in the distinct nodes."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._size(key) + self._size(item) for key, item in node.value)
        self._sizes[id(node)] = size
        return size

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._finished:
                raise YamlRefused(f"has the alias *{clipped(event.anchor)} inside the "
                                  "collection it names", event.start_mark)
            node = super().compose_node(parent, index)
            self._count(self._size(node), event.start_mark)
            return node
        node = super().compose_node(parent, index)
        self._finished.add(id(node))
        self._count(1, node.start_mark)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` merges keys that explicit ones may override
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first_line.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeConstructor refuses it in its own words
                if earlier is not None:
                    raise YamlRefused(f"repeats the key {shown(key)} (first at line {earlier})",
                                      key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _parse(text: str) -> Any:
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml_mapping(path: str | Path, what: str) -> dict[Any, Any]:
    """The mapping in YAML file `path`; an empty file is an empty mapping.

    `what` names the file in messages ("config file", "run config", "study file"); every
    failure is one LrwaError line starting with "<what> <path>".
    """
    path = Path(path)
    name = f"{what} {path}"
    try:
        if not path.exists():
            raise LrwaError(f"{name} does not exist")
        if not path.is_file():
            raise LrwaError(f"{name} is not a file")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise LrwaError(f"{name} is {size} bytes; lrwa reads YAML files of at most "
                            f"{MAX_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LrwaError(f"{name} is not valid YAML (not UTF-8 text)") from None
    except OSError as error:
        raise LrwaError(f"{name} cannot be read ({error.strerror})") from None
    try:
        data = _parse(text)
    except RecursionError:
        raise LrwaError(f"{name} is nested too deeply to be a config") from None
    except ValueError as error:  # a number too long to convert, by Python's own limit
        raise LrwaError(f"{name} is not valid YAML ({clipped(str(error))})") from None
    except YamlRefused as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise LrwaError(f"{name} is refused{where}: it {error.reason}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None)
        detail = f" ({clipped(problem)})" if problem else ""
        raise LrwaError(f"{name} is not valid YAML{where}{detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LrwaError(f"{name} must hold a mapping of keys to values, not a "
                        f"{type(data).__name__}")
    return data
