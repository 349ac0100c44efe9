"""ir/graph.Digraph, the dataflow graph that replaced networkx on the compile path,
answers what networkx answers on random graphs (networkx is the reference here)."""

import random

import networkx as nx
import pytest

from einsumattn.ir.graph import Digraph, digraph


def random_graph(seed: int, acyclic: bool) -> tuple[Digraph, nx.DiGraph]:
    rng = random.Random(seed)
    nodes = [f"T{i}" for i in range(rng.randint(1, 12))]
    rng.shuffle(nodes)
    edges = []
    for _ in range(rng.randint(0, 25)):
        a, b = rng.choice(nodes), rng.choice(nodes)
        if acyclic and a != b and nodes.index(a) > nodes.index(b):
            a, b = b, a
        edges.append((a, b))
    reference = nx.DiGraph()
    reference.add_nodes_from(nodes)
    reference.add_edges_from(edges)
    return digraph(nodes, edges), reference


@pytest.mark.parametrize("seed", range(60))
def test_order_and_ancestors_agree_with_networkx(seed):
    ours, reference = random_graph(seed, acyclic=True)
    assert ours.nodes == list(reference.nodes)
    assert ours.edges == list(reference.edges)
    loopless = reference.copy()
    loopless.remove_edges_from(list(nx.selfloop_edges(loopless)))
    rank = {node: (len(node) % 3, node) for node in ours.nodes}
    assert ours.topological_order(key=rank.get) == list(
        nx.lexicographical_topological_sort(loopless, key=rank.get))
    for node in ours.nodes:
        assert ours.ancestors(node) == nx.ancestors(loopless, node)
        assert list(ours.successors(node)) == list(reference.successors(node))
        assert list(ours.predecessors(node)) == list(reference.predecessors(node))


@pytest.mark.parametrize("seed", range(60))
def test_find_cycle_finds_one_exactly_when_there_is_one(seed):
    ours, reference = random_graph(seed, acyclic=False)
    cycle = ours.find_cycle()
    assert (cycle is not None) == (not nx.is_directed_acyclic_graph(reference))
    if cycle is not None:
        assert all(ours.has_edge(a, b) for a, b in cycle)
        assert all(b == c for (_, b), (c, _) in zip(cycle, cycle[1:] + cycle[:1]))
    assert ours.without_self_loops().find_cycle() is None or \
        any(len(c) > 1 for c in nx.simple_cycles(reference))


def test_topological_order_refuses_a_cycle():
    with pytest.raises(ValueError):
        digraph("AB", [("A", "B"), ("B", "A")]).topological_order(key=str)
