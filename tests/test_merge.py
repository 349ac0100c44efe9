"""The merge of partial states (transform/merge.py): derived, proved, and checked on the
oracle: the spec's outputs equal finish(merge(partial(range 1), partial(range 2), ...))
for ranges cut anywhere, merged in any bracketing."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, compiled_specs, examples
from einsumattn import evaluate
from einsumattn.ir import bind
from einsumattn.loader import load
from einsumattn.transform.merge import Merge, derive_merge

# Which examples merge over their streamed rank, and why the others do not: a change
# in either direction is a regression or a new capability, to be looked at.
MERGED = {"alibi", "causal_softmax", "cosine_attention", "diff_transformer",
          "efficient_attention", "gqa", "linear_attention", "neighborhood_1d",
          "normalized_attention", "relu_attention", "retention", "sigmoid_attention",
          "sliding_window_sinks", "softcap", "softmax_1pass", "softmax_3pass"}
PREFIXED = {"gla", "gla_recurrent"}     # outputs over the rank: LASP-2's prefix combine
REFUSED = {
    "aaren": "the dim P is sized by M",
    "cbam": "a range of C holds only some of the outputs",
    "clipped_softmax": "M still takes 2 passes",
    "eca": "a range of H holds only some of the outputs",
    "neighborhood_2d": "the dim IH is sized by M",
    "softpick": "M still takes 2 passes",
    "squeeze_excitation": "a range of C holds only some of the outputs",
    "stick_breaking": "the dim J is sized by M",
}
SIZES = dict(B=2, H=2, KH=1, P=6, M=19, E=3, F=2, T=19, D=3)


def _spec(name: str):
    return load(ROOT / "examples" / f"{name}.attn")


def _inputs(cascade, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = {t.name: rng.standard_normal([SIZES[r] for r in t.ranks])
              for t in cascade.inputs}
    if "GK" in values:  # gla_recurrent's log-space gates: logsigmoid, decays below 1
        values["GK"] = -np.log1p(np.exp(-values["GK"]))
    return values


def _merged(cascade, merge: Merge, inputs: dict, cuts: list[int], bracketing: str):
    """The outputs through partial states over the ranges between `cuts`."""
    whole = bind(cascade, shapes={n: v.shape for n, v in inputs.items()})
    bounds = [0, *cuts, whole.sizes[merge.rank]]
    states = []
    for start, stop in zip(bounds, bounds[1:]):
        shard = {}
        for tensor in merge.partial.inputs:
            value = inputs[tensor.name]
            if merge.rank in tensor.ranks:
                axis = tensor.ranks.index(merge.rank)
                value = np.take(value, range(start, stop), axis=axis)
            shard[tensor.name] = value
        ends = evaluate(merge.partial, shard,
                        merge.params_for(merge.partial, whole.sizes[merge.rank], start))
        states.append({part.name: ends[part.end] for part in merge.parts})

    if merge.kind == "prefix":
        return _prefixed(cascade, merge, inputs, bounds, states, whole)

    def combine(a, b):
        sides = [t.name for t in merge.combine.inputs]
        given = {}
        for part, side_a, side_b in zip(merge.parts, sides[0::2], sides[1::2]):
            given[side_a], given[side_b] = a[part.name], b[part.name]
        return evaluate(merge.combine, given)

    if bracketing == "left":
        state = states[0]
        for other in states[1:]:
            state = combine(state, other)
    else:  # right: a ring that merges from the last shard back
        state = states[-1]
        for other in reversed(states[:-1]):
            state = combine(other, state)
    given = {t.name: state[t.name] if t.name in state else inputs[t.name]
             for t in merge.finish.inputs}
    return evaluate(merge.finish, given,
                    merge.params_for(merge.finish, whole.sizes[merge.rank]))


def _combined(merge: Merge, a: dict, b: dict) -> dict:
    sides = [t.name for t in merge.combine.inputs]
    given = {}
    for part, side_a, side_b in zip(merge.parts, sides[0::2], sides[1::2]):
        given[side_a], given[side_b] = a[part.name], b[part.name]
    return evaluate(merge.combine, given)


def _prefixed(cascade, merge: Merge, inputs: dict, bounds: list[int], states: list,
              whole) -> dict:
    """LASP-2 on the oracle: each range's outputs from the combined states before it."""
    pieces = {output: [] for output in cascade.outputs}
    entering = {part.name: np.zeros_like(states[0][part.name]) for part in merge.parts}
    for number, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        given = {}
        for tensor in merge.finish.inputs:
            if tensor.name in merge.entering:
                given[tensor.name] = entering[merge.entering[tensor.name]]
            else:
                axis = tensor.ranks.index(merge.rank)
                given[tensor.name] = np.take(inputs[tensor.name], range(start, stop), axis)
        out = evaluate(merge.finish, given, merge.params_for(
            merge.finish, whole.sizes[merge.rank], start))
        for output in cascade.outputs:
            pieces[output].append(out[output])
        entering = states[number] if number == 0 else \
            _combined(merge, entering, states[number])
    return {output: np.concatenate(values, axis=cascade.tensors[output].ranks.index(
        merge.rank)) for output, values in pieces.items()}


def test_every_example_merges_or_says_why():
    for path in sorted((ROOT / "examples").glob("*.attn")):
        result = derive_merge(load(path))
        if path.stem in PREFIXED:
            assert isinstance(result, Merge) and result.kind == "prefix", (path.stem, result)
            assert len(result.proofs) == 3 and not result.commutative
        elif path.stem in MERGED:
            assert isinstance(result, Merge), (path.stem, result)
            assert len(result.proofs) == 4 and result.commutative
        else:
            assert not isinstance(result, Merge), path.stem
            assert REFUSED[path.stem] in result.reason, (path.stem, result.reason)


@pytest.mark.parametrize("name", sorted(MERGED | PREFIXED))
@pytest.mark.parametrize("bracketing", ["left", "right"])
def test_merged_ranges_give_the_spec_s_outputs(name, bracketing):
    cascade = _spec(name)
    merge = derive_merge(cascade, tile=4)
    inputs = _inputs(cascade, seed=1)
    expected = evaluate(cascade, inputs)
    # Ranges of 1, 6 and 12 keys: cut inside a tile of 4 and on one; a range of one key
    # sits wholly above the causal diagonal for the first queries (an empty state).
    got = _merged(cascade, merge, inputs, [1, 7], bracketing)
    for output in cascade.outputs:
        np.testing.assert_allclose(got[output], expected[output], rtol=1e-11, atol=1e-12)


@settings(max_examples=examples(10), deadline=None)
@given(cuts=st.lists(st.integers(1, SIZES["M"] - 1), min_size=1, max_size=4, unique=True),
       seed=st.integers(0, 2**16), name=st.sampled_from(["causal_softmax",
                                                            "sliding_window_sinks",
                                                            "sigmoid_attention"]))
def test_property_any_cuts_merge_to_the_whole(cuts, seed, name):
    cascade = _spec(name)
    merge = derive_merge(cascade, tile=4)
    inputs = _inputs(cascade, seed)
    expected = evaluate(cascade, inputs)
    got = _merged(cascade, merge, inputs, sorted(cuts), "left")
    for output in cascade.outputs:
        np.testing.assert_allclose(got[output], expected[output], rtol=1e-11, atol=1e-12)


def test_the_softmax_state_is_the_running_max_and_rescaled_sums_with_its_log_sum_exp():
    merge = derive_merge(_spec("causal_softmax"))
    kinds = {part.name: (part.kind, part.shift) for part in merge.parts}
    assert kinds == {"RGM": ("max", None), "RSD": ("rescaled", "RGM"),
                     "RSNV": ("rescaled", "RGM")}
    assert merge.lse == ("RGM", "RSD")
    text = "\n".join(merge.lines())
    assert "WA_RGM[b, h, p] = where(A_RGM[b, h, p] == -inf, 0.0, exp(A_RGM[b, h, p] - " \
           "RGM[b, h, p]))" in text
    assert "RSD[b, h, p] = A_RSD[b, h, p] * WA_RGM[b, h, p] + B_RSD[b, h, p] * " \
           "WB_RGM[b, h, p]" in text
    # Masks see global positions: the partial's mask reads the range's start.
    assert "m1 * M0 + m0 + m_start <= p" in "\n".join(
        str(e.filter) and __import__("einsumattn.ir.printer", fromlist=["x"]).rhs_text(e)
        for e in merge.partial.einsums)


def test_sigmoid_attention_s_bias_reads_the_whole_key_count():
    """bias = -log(M) is the whole rank's: a range's default reads the count, not the
    range's own length."""
    merge = derive_merge(_spec("sigmoid_attention"))
    assert [(p.name, p.kind) for p in merge.parts] == [("AV", "sum")]
    partial = merge.partial
    whole = bind(partial, shapes={"Q": (1, 1, 2, 3), "K": (1, 1, 5, 3), "V": (1, 1, 5, 2)},
                 params=merge.params_for(partial, count=40, start=8))
    assert whole.params["bias"] == pytest.approx(-np.log(40))


HEAD = """attention custom
dims B, H, P, M, E, F
input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]
split M -> M1, M0 by 4
S[b, h, p, m1, m0] = Q[b, h, p, e] * K[b, h, m1*M0 + m0, e]
LM[b, h, p, m1] = max[m0] S[b, h, p, m1, m0]
init RM[b, h, p, 0] = -inf
RM[b, h, p, m1+1] = max(RM[b, h, p, m1], LM[b, h, p, m1])
N[b, h, p, m1, m0] = exp(S[b, h, p, m1, m0] - RM[b, h, p, m1+1])
L[b, h, p, m1] = sum[m0] N[b, h, p, m1, m0]
init R[b, h, p, 0] = 0
"""


@pytest.mark.parametrize("update, reason", [
    # The rescale factor upside down: exp(new max - old max).
    ("C[b, h, p, m1] = exp(RM[b, h, p, m1+1] - RM[b, h, p, m1])\n"
     "R[b, h, p, m1+1] = L[b, h, p, m1] + R[b, h, p, m1] * C[b, h, p, m1]",
     "step(merge(a, s), u) = merge(a, step(s, u)) fails for R"),
    # A decay that is no rescale: each tile halves what came before.
    ("R[b, h, p, m1+1] = L[b, h, p, m1] + R[b, h, p, m1] * 0.5",
     "none of a running max, min or sum"),
    # A state read nonlinearly.
    ("R[b, h, p, m1+1] = L[b, h, p, m1] + R[b, h, p, m1] * R[b, h, p, m1]",
     "none of a running max, min or sum"),
])
def test_a_state_that_does_not_merge_is_refused_with_its_reason(update, reason):
    spec = HEAD + update + "\nO[b, h, p] = R[b, h, p, M1]\noutput O\n"
    result = derive_merge(load(spec))
    assert not isinstance(result, Merge)
    assert reason in result.reason


def test_a_shifted_key_read_needs_a_halo():
    spec = """attention shifted
dims B, H, P, M, E, F
input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]
S[b, h, p, m] = Q[b, h, p, e] * (K[b, h, m, e] + K[b, h, m - 1, e])
O[b, h, p, f] = S[b, h, p, m] * V[b, h, m, f]
output O
"""
    result = derive_merge(load(spec))
    assert "K is read at K[b, h, m - 1, e]" in result.reason
    assert "halo" in result.reason


# ------------------------------------------------------------------ compile --merge
API_SPECS = ["causal_softmax", "sigmoid_attention", "linear_attention",
             "normalized_attention", "gqa", "sliding_window_sinks", "gla_recurrent"]


@pytest.fixture(scope="module")
def merge_modules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("merge")
    texts = {name: (ROOT / "examples" / f"{name}.attn").read_text()
             for name in [*API_SPECS, "clipped_softmax"]}
    return compiled_specs(folder, texts, "merge", merge=True)


def _torch_inputs(cascade, sizes, seed=0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randn([sizes[r] for r in t.ranks], generator=generator)
            for t in cascade.inputs]


@pytest.mark.parametrize("name", API_SPECS)
def test_the_module_s_partial_merge_finish_give_its_outputs(merge_modules, name):
    """Three ranges of keys (one shorter than a tile of 64, one across a tile boundary),
    merged in both bracketings, against the reference backend and the oracle."""
    import torch

    cascade, module = merge_modules[name]
    sizes = dict(B=2, H=2, KH=1, P=50, M=150, E=8, F=4, T=150, D=8)
    inputs = _torch_inputs(cascade, sizes)
    if name == "gla_recurrent":   # log-space gates: decays below 1
        inputs[3] = torch.nn.functional.logsigmoid(inputs[3])
    info = module.MERGE
    if info["kind"] == "prefix":
        _check_prefix(cascade, module, inputs, sizes)
        return
    rank = info["rank"]
    states = []
    for start, stop in ((0, 30), (30, 100), (100, 150)):
        shard = [x.narrow(t.ranks.index(rank), start, stop - start) if rank in t.ranks
                 else x for x, t in zip(inputs, cascade.inputs)]
        states.append(module.partial(*shard, **{info["start"]: start,
                                                info["count"]: sizes[rank]}))
    assert set(states[0]) == set(info["state"])
    extra = [x for x, t in zip(inputs, cascade.inputs) if t.name in info["finish_inputs"]]
    keywords = {k: sizes[rank] for k in info["finish_keywords"]}
    left = module.finish(module.merge(module.merge(states[0], states[1]), states[2]),
                         *extra, **keywords)
    right = module.finish(module.merge(states[0], module.merge(states[1], states[2])),
                          *extra, **keywords)
    expected = module.reference(*inputs)
    oracle = evaluate(cascade, {t.name: x.double().numpy()
                                for t, x in zip(cascade.inputs, inputs)})
    for got in (left, right):
        got = got if isinstance(got, tuple) else (got,)
        reference = expected if isinstance(expected, tuple) else (expected,)
        for value, ref, output in zip(got, reference, cascade.outputs):
            assert value.dtype == torch.float32
            # float32 throughout: a sum over 150 keys, rescaled a few times more than
            # the reference's, stays within a few ulps of the row's magnitude.
            torch.testing.assert_close(value, ref, rtol=2e-5, atol=2e-5)
            np.testing.assert_allclose(value.double().numpy(), oracle[output],
                                       rtol=2e-5, atol=2e-5)


def _check_prefix(cascade, module, inputs, sizes):
    """Each range's outputs from the merge of the states before it (LASP-2)."""
    import torch

    info = module.MERGE
    rank = info["rank"]
    entering, pieces = None, []
    for start, stop in ((0, 30), (30, 100), (100, 150)):
        shard = [x.narrow(t.ranks.index(rank), start, stop - start)
                 for x, t in zip(inputs, cascade.inputs)]
        state = module.partial(*shard, **{info["start"]: start,
                                          info["count"]: sizes[rank]})
        before = entering if entering is not None else \
            {k: torch.zeros_like(v) for k, v in state.items()}
        pieces.append(module.finish(before, *shard))
        entering = state if entering is None else module.merge(entering, state)
    # float32: a recurrence over 150 steps of decays below 1, rounded in another
    # order (a range starts from a state summed elsewhere) than the reference's.
    torch.testing.assert_close(torch.cat(pieces, dim=2), module.reference(*inputs),
                               rtol=2e-5, atol=2e-5)


def test_log_sum_exp_is_the_rows_log_sum_exp_of_the_scores(merge_modules):
    import torch

    cascade, module = merge_modules["causal_softmax"]
    q, k, v = _torch_inputs(cascade, dict(B=1, H=2, P=40, M=90, E=8, F=4), seed=3)
    state = module.merge(module.partial(q, k[:, :, :50], v[:, :, :50], m_start=0, m_count=90),
                         module.partial(q, k[:, :, 50:], v[:, :, 50:], m_start=50,
                                        m_count=90))
    scores = torch.einsum("bhpe,bhme->bhpm", q, k) / 8 ** 0.5
    causal = torch.arange(90)[None, :] <= torch.arange(40)[:, None]
    expected = torch.logsumexp(scores.masked_fill(~causal, -torch.inf), dim=-1)
    torch.testing.assert_close(module.log_sum_exp(state), expected, rtol=1e-5, atol=1e-5)
    # The second range lies wholly above the diagonal for these 40 queries: its state
    # is the empty one, and merging it changes nothing.
    empty = module.partial(q, k[:, :, 50:], v[:, :, 50:], m_start=50, m_count=90)
    assert torch.all(empty["RGM"] == -torch.inf) and torch.all(empty["RSD"] == 0)


def test_a_spec_without_a_merge_says_why_in_its_module(merge_modules):
    _, module = merge_modules["clipped_softmax"]
    assert module.MERGE is None
    assert not hasattr(module, "partial")
    source = pathlib.Path(module.__file__).read_text()
    assert "# No merge of partial states: merge of partial states does not apply to" \
           in source
    assert "M still takes 2 passes after the rewrites" in source.replace("\n# ", " ")


def test_analyze_prints_the_merge_or_why_not(capsys):
    from einsumattn.cli import main

    assert main(["analyze", str(ROOT / "examples" / "causal_softmax.attn")]) == 0
    text = capsys.readouterr().out
    assert "Merge of partial states (split-KV, context parallelism)" in text
    assert "    RSD[b, h, p]: a sum rescaled by the running max RGM" in text
    assert "  proved: merge(merge(a, b), c) = merge(a, merge(b, c))" in text
    assert main(["analyze", str(ROOT / "examples" / "clipped_softmax.attn"),
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "M still takes 2 passes" in data["merge"]["refused"]


def test_compile_merge_says_what_the_state_is(tmp_path, capsys):
    from einsumattn.cli import main

    spec = str(ROOT / "examples" / "sigmoid_attention.attn")
    assert main(["compile", spec, "--merge", "-o", str(tmp_path)]) == 0
    assert "  merge: partial, merge, finish over ranges of M; the state is AV" in \
        capsys.readouterr().out
    assert "\ndef partial(Q, K, V, *, m_start, m_count, scale=None, bias=None):" in \
        (tmp_path / "sigmoid_attention.py").read_text()


def test_analyze_of_a_reduction_read_by_another_reduction_does_not_crash(tmp_path, capsys):
    """The thorough profile's generated spec: T1 sums over every rank and T2 reads it;
    the merge was looked up at a recurrence position T1 does not have (a TypeError)."""
    from einsumattn.cli import main

    spec = tmp_path / "gen.attn"
    spec.write_text("attention gen_2e_bp\n\ndims  B = 1, P\ninput X0[b, p], X1[b], X2[b]\n\n"
                    "T1 = sum[b, p] tanh(X0[b, p]) * 1\nT2 = tanh(tanh(T1) * 1)\n\n"
                    "output T1, T2\n")
    assert main(["analyze", str(spec)]) == 0
    assert "  refused: merge of partial states does not apply to gen_2e_bp" in \
        capsys.readouterr().out
