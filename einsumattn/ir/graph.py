"""A small directed graph for dataflow between tensors and between params.

The compiler asks four things of a graph: who produces and who consumes a tensor, what
a tensor depends on (its ancestors), whether there is a cycle (and which), and an
order that respects the edges and otherwise follows a key. networkx answers all four,
but importing it costs about 0.15 s, as much as the rest of a compile; these graphs
have tens of nodes, so plain dicts do. Nodes and edges keep their insertion order
(edges grouped by their source, as networkx lists them), which messages and reports
rely on.
"""

from __future__ import annotations

import heapq
from typing import Callable, Hashable, Iterable, Iterator

Node = Hashable


class Digraph:
    """Nodes and directed edges, in insertion order. Self-loops are allowed (a
    recurrence reads itself); `ancestors` and `topological_order` ignore them,
    `find_cycle` reports them (a param whose default uses itself)."""

    def __init__(self) -> None:
        self._successors: dict[Node, dict[Node, None]] = {}
        self._predecessors: dict[Node, dict[Node, None]] = {}

    def add_node(self, node: Node) -> None:
        if node not in self._successors:
            self._successors[node] = {}
            self._predecessors[node] = {}

    def add_edge(self, source: Node, target: Node) -> None:
        self.add_node(source)
        self.add_node(target)
        self._successors[source][target] = None
        self._predecessors[target][source] = None

    # ----------------------------------------------------------------- reading
    @property
    def nodes(self) -> list[Node]:
        return list(self._successors)

    @property
    def edges(self) -> list[tuple[Node, Node]]:
        return [(source, target) for source, targets in self._successors.items()
                for target in targets]

    def has_edge(self, source: Node, target: Node) -> bool:
        return target in self._successors.get(source, ())

    def successors(self, node: Node) -> Iterator[Node]:
        return iter(self._successors[node])

    def predecessors(self, node: Node) -> Iterator[Node]:
        return iter(self._predecessors[node])

    def ancestors(self, node: Node) -> set[Node]:
        """Every node with a path to `node`, not `node` itself."""
        found: set[Node] = set()
        stack = [p for p in self._predecessors[node] if p != node]
        while stack:
            current = stack.pop()
            if current not in found and current != node:
                found.add(current)
                stack.extend(self._predecessors[current])
        return found

    def without_self_loops(self) -> Digraph:
        return digraph(self._successors, ((source, target) for source, target in self.edges
                                          if source != target))

    def find_cycle(self) -> list[tuple[Node, Node]] | None:
        """The edges of one cycle (a self-loop is one), or None: depth first from each
        node in order, the first edge back to a node on the current path closes it."""
        done: set[Node] = set()
        for root in self._successors:
            if root in done:
                continue
            path: list[Node] = [root]
            on_path = {root: 0}
            pending = [iter(self._successors[root])]
            while pending:
                for target in pending[-1]:
                    if target in done:
                        continue
                    if target in on_path:
                        cycle = path[on_path[target]:] + [target]
                        return list(zip(cycle, cycle[1:]))
                    on_path[target] = len(path)
                    path.append(target)
                    pending.append(iter(self._successors[target]))
                    break
                else:
                    pending.pop()
                    finished = path.pop()
                    del on_path[finished]
                    done.add(finished)
        return None

    def topological_order(self, key: Callable[[Node], object]) -> list[Node]:
        """Every node after its predecessors; among the nodes ready at once, the one with
        the smallest key (then the one added first). The graph must have no cycle other
        than self-loops."""
        position = {node: i for i, node in enumerate(self._successors)}
        waiting = {node: sum(1 for p in preds if p != node)
                   for node, preds in self._predecessors.items()}
        ready = [(key(node), position[node], node) for node, count in waiting.items()
                 if count == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            _, _, node = heapq.heappop(ready)
            order.append(node)
            for target in self._successors[node]:
                if target != node:
                    waiting[target] -= 1
                    if waiting[target] == 0:
                        heapq.heappush(ready, (key(target), position[target], target))
        if len(order) != len(position):
            raise ValueError("the graph has a cycle")
        return order


def digraph(nodes: Iterable[Node], edges: Iterable[tuple[Node, Node]]) -> Digraph:
    graph = Digraph()
    for node in nodes:
        graph.add_node(node)
    for source, target in edges:
        graph.add_edge(source, target)
    return graph
