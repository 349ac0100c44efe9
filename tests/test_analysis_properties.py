"""Property tests of the pass analysis on random cascades (issue: analysis, item 6).

The pass count is checked against a second, independent formulation of FuseMax's rule:
the longest path through the Einsums that traverse a rank, where an edge costs one pass
when the value leaves a full reduction of the rank (or the final value of a recurrence
over it) and nothing when it streams. The analysis itself propagates "ready" levels
forward in dataflow order; the two must agree."""

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

import einsumattn
from einsumattn.analysis.passes import (analysed_ranks, analyse_rank, fully_reduces,
                                        rank_variables, traverses)
from einsumattn.ir import Einsum
from einsumattn.ir import expr as ir

from conftest import examples
from spec_generator import cascades

SETTINGS = settings(max_examples=examples(60), deadline=None)


def _blocking(cascade, producer: Einsum, consumer: Einsum, variables) -> bool:
    """Whether the value `consumer` reads from `producer` exists only after a whole pass."""
    if fully_reduces(producer, variables):
        return True
    if producer.iter_var in variables:
        for expr in (consumer.body, consumer.filter, consumer.init):
            for read in ir.reads(expr) if expr is not None else ():
                if read.tensor == producer.tensor and not set(
                        ir.index_vars(read.indices[producer.iterative])) & set(variables):
                    return True
    return False


def reference_passes(cascade, rank: str) -> int:
    """Longest path over the Einsums that traverse `rank`: an edge X -> E exists when E
    reaches X's value through Einsums that do not traverse the rank; it weighs 1 when
    the value leaves X complete only after a pass."""
    variables = rank_variables(cascade, rank)
    einsums = {e.tensor: e for e in cascade.einsums}
    streaming = [e for e in cascade.einsums if traverses(e, variables)]
    graph = nx.DiGraph()
    graph.add_nodes_from(e.tensor for e in streaming)
    for source in streaming:
        # Walk forward from `source` through Einsums that do not traverse the rank.
        first_hops = [c for c in cascade.graph.successors(source.tensor)
                      if c != source.tensor]
        stack = [(hop, _blocking(cascade, source, einsums[hop], variables))
                 for hop in first_hops]
        seen = set()
        while stack:
            name, weight = stack.pop()
            if (name, weight) in seen:
                continue
            seen.add((name, weight))
            if traverses(einsums[name], variables):
                old = graph.get_edge_data(source.tensor, name, {"w": -1})["w"]
                graph.add_edge(source.tensor, name, w=max(old, int(weight)))
            else:
                stack += [(c, weight) for c in cascade.graph.successors(name) if c != name]
    longest = {}
    for node in nx.topological_sort(graph):
        longest[node] = max((longest[p] + graph.edges[p, node]["w"]
                             for p in graph.predecessors(node)), default=0)
    return 1 + max(longest.values(), default=0) if streaming else 0


@given(cascades())
@SETTINGS
def test_pass_count_matches_the_longest_path_formulation(spec):
    cascade = einsumattn.load(spec.text)
    for rank in analysed_ranks(cascade):
        assert analyse_rank(cascade, rank).passes == reference_passes(cascade, rank), \
            (rank, spec.text)


@given(cascades())
@SETTINGS
def test_pass_count_is_bounded_by_the_full_reductions(spec):
    cascade = einsumattn.load(spec.text)
    for rank in analysed_ranks(cascade):
        variables = rank_variables(cascade, rank)
        passes = analyse_rank(cascade, rank).passes
        completions = sum(1 for e in cascade.einsums if fully_reduces(e, variables)
                          or e.iter_var in variables)
        assert 1 <= passes <= 1 + completions, (rank, spec.text)


@given(cascades(), st.data())
@SETTINGS
def test_re_reading_a_completed_value_adds_exactly_the_pass_the_theory_says(spec, data):
    """Append `Z[vars of T, r] = T[...] * r`: Z traverses the rank again after T. It runs
    one pass after T is complete, so the count grows by one exactly when T completes in
    the last pass, and not at all otherwise."""
    base = einsumattn.load(spec.text)
    rank = data.draw(st.sampled_from(sorted(base.ranks)), label="rank")
    var = base.ranks[rank].var
    tensor = data.draw(st.sampled_from([e.tensor for e in base.einsums]), label="T")
    t = base.tensors[tensor]
    einsum = base.einsum(tensor)
    variables = [base.ranks[r].var for r in t.ranks]
    if var in variables or t.iterative is not None:
        return  # Z must not be indexed by r through T, and T's positions are plain here
    before = analyse_rank(base, rank)
    read = ir.Read(tensor, tuple(ir.Index(v) for v in variables))
    extra = Einsum("ZZ", tuple(variables) + (var,), ir.Op("*", (read, ir.Index(var))))
    tensors = dict(base.tensors)
    tensors["ZZ"] = type(t)("ZZ", t.ranks + (rank,), False)
    grown = type(base)(base.name, base.ranks, base.splits, base.params, tensors,
                       base.einsums + (extra,), base.outputs + ("ZZ",), base.source)
    after = analyse_rank(grown, rank)
    complete_after = before.ready[tensor]
    expected = max(before.passes, complete_after + 1)
    assert after.passes == expected
    if fully_reduces(einsum, rank_variables(base, rank)) and \
            before.pass_of[tensor] == before.passes:
        assert after.passes == before.passes + 1
    assert after.passes == reference_passes(grown, rank)
