"""YAML for user files (configs, ``--set`` values, reference accuracies): PyYAML's safe loader,
with a bound on the size of the value a document expands to.

An alias (``*a``) reuses an anchored node, so a few lines of aliases of aliases (the "billion
laughs") describe a value of billions of items: cheap to compose (the nodes are shared), ruinous
to print, compare, copy or serialise. The document's expanded size is counted on the composed
node graph (memoised per node, so counting costs the size of the text) and a document over
:data:`MAX_NODES` is refused before any Python value is built.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from unionrobust.errors import UnionRobustError

#: the most nodes (scalars, lists, mappings) a document may expand to, aliases expanded; a
#: training config has a few hundred
MAX_NODES = 100_000


class YAMLTooLarge(UnionRobustError):
    """A document whose aliases expand beyond :data:`MAX_NODES` nodes, or refer to themselves."""


def expanded_size(node: Node, limit: int = MAX_NODES) -> int:
    """The number of nodes of ``node`` with every alias expanded; raise :class:`YAMLTooLarge`
    as soon as it passes ``limit`` or a node contains itself."""
    memo: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in open_nodes:
            raise YAMLTooLarge("a YAML alias refers to the node that contains it")
        open_nodes.add(key)
        total = 1
        if isinstance(n, SequenceNode):
            children = n.value
        elif isinstance(n, MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                raise YAMLTooLarge(
                    f"YAML aliases expand to more than {limit:,} values (an alias bomb?); "
                    "refused before building them"
                )
        open_nodes.discard(key)
        memo[key] = total
        return total

    return size(node)


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document expanding beyond :data:`MAX_NODES` nodes."""

    def compose_document(self) -> Node:
        node = super().compose_document()
        expanded_size(node)
        return node


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)`` with the expansion bound; :class:`YAMLTooLarge` (one line) for an
    alias bomb, ``yaml.YAMLError`` for text that is not YAML (callers name the source)."""
    try:
        return yaml.load(text, Loader=BoundedSafeLoader)  # a SafeLoader subclass
    except RecursionError:
        raise YAMLTooLarge("YAML nested too deeply") from None
