"""Rule 4: the chunked form of a linear recurrence (transform/chunked.py), checked
against the recurrence as written under the float64 oracle, at lengths that are not a
multiple of the chunk, and refused with its reason where the recurrence is not linear
attention's."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import einsumattn
from einsumattn.evaluate import evaluate
from einsumattn.ir import expr as ir
from einsumattn.ir.printer import cascade_text
from einsumattn.transform import CHUNKED, rewrite
from einsumattn.transform.chunked import chunk_recurrences

from conftest import ROOT, compiled_specs, examples

GLA = ROOT / "examples" / "gla_recurrent.attn"

# RetNet's retention as a recurrence: a decay per head, a constant (its log is taken).
RETENTION = """attention retention_recurrent
dims  B, H, T, D, F
input Q[b, h, t, d], K[b, h, t, d], V[b, h, t, f]
init S[b, h, 0, d, f] = 0
S[b, h, t+1, d, f] = (1 - 2 ** (-5 - h)) * S[b, h, t, d, f] + K[b, h, t, d] * V[b, h, t, f]
O[b, h, t, f] = Q[b, h, t, d] * S[b, h, t+1, d, f]
output O
"""

# A gate per head and step (Mamba-2 / Lightning style), read from an input, and plain
# causal linear attention (no gate: the state only accumulates).
SCALAR_GATE = """attention scalar_gate
dims  B, H, T, D, F
input Q[b, h, t, d], K[b, h, t, d], V[b, h, t, f], A[b, h, t]
init S[b, h, 0, d, f] = 0
S[b, h, t+1, d, f] = exp(A[b, h, t]) * S[b, h, t, d, f] + K[b, h, t, d] * V[b, h, t, f]
O[b, h, t, f] = Q[b, h, t, d] * S[b, h, t+1, d, f]
output O
"""

NO_GATE = """attention causal_linear
dims  B, T, D, F
input Q[b, t, d], K[b, t, d], V[b, t, f]
init S[b, 0, d, f] = 0
S[b, t+1, d, f] = S[b, t, d, f] + K[b, t, d] * V[b, t, f]
O[b, t, f] = Q[b, t, d] * S[b, t+1, d, f]
output O
"""


def _inputs(cascade, sizes, seed, gate_scale=1.0):
    rng = np.random.default_rng(seed)
    values = {}
    for tensor in cascade.inputs:
        shape = tuple(sizes[r] for r in tensor.ranks)
        if tensor.name in ("GK", "A"):
            # log-sigmoid gates: in (0, 1) after exp; a large scale puts them near 0,
            # a small one near 1/2, a negative shift near 1
            values[tensor.name] = -np.logaddexp(0, -gate_scale * rng.normal(size=shape))
        else:
            values[tensor.name] = rng.normal(size=shape)
    return values


def _agree(spec, chunk, sizes, seed=0, gate_scale=1.0):
    cascade = einsumattn.load(spec)
    chunked, steps, blocked = chunk_recurrences(cascade, chunk)
    assert [s.rule for s in steps] == [CHUNKED], blocked
    again = einsumattn.load(cascade_text(chunked))       # the printed form parses back
    inputs = _inputs(cascade, sizes, seed, gate_scale)
    expected = evaluate(cascade, inputs)["O"]
    for derived in (chunked, again):
        np.testing.assert_allclose(evaluate(derived, inputs)["O"], expected,
                                   rtol=1e-10, atol=1e-12)
    return chunked


@pytest.mark.parametrize("chunk", [1, 3, 4])
@pytest.mark.parametrize("length", [1, 4, 7, 13])
def test_gla_s_chunked_form_agrees_with_the_recurrence(chunk, length):
    _agree(GLA, chunk, dict(B=2, H=2, T=length, D=3, F=4), seed=length)


@pytest.mark.parametrize("spec", [RETENTION, SCALAR_GATE, NO_GATE],
                         ids=["retention", "scalar gate", "no gate"])
def test_other_gates_agree(spec):
    _agree(spec, 4, dict(B=1, H=3, T=11, D=3, F=2))


@settings(max_examples=examples(30), deadline=None)
@given(length=st.integers(1, 20), chunk=st.integers(1, 8), seed=st.integers(0, 2**16),
       gate_scale=st.sampled_from([0.05, 1.0, 8.0]))
def test_property_chunked_gla_agrees_at_any_length_and_chunk(length, chunk, seed,
                                                            gate_scale):
    """Gates near 1 (scale 0.05: log-gates near -0.7), and near 0 (scale 8: many gates
    below 1e-3), every length against every chunk."""
    _agree(GLA, chunk, dict(B=1, H=1, T=length, D=2, F=3), seed, gate_scale)


def test_rewrite_prints_the_chunked_form_with_its_proof():
    result = rewrite(GLA)
    text = result.text()
    assert "chunked form of a linear recurrence: S over T in chunks of 64 steps" in text
    assert "#   proved:" in text and "exp(L[t] - L[s])" in text
    chunked = einsumattn.load(text)
    assert chunked.einsum("S_C").iterative is not None        # one update per chunk
    attention = chunked.einsum("S_A")
    assert set(attention.indices) >= {"t1", "t0", "tk"} and attention.filter is not None
    # Every exponential in the chunked form is of a difference of one chunk's sums of
    # log-gates or of one such sum: the cumulative sum never spans chunks.
    assert chunked.einsum("S_L").reduced == ("tk",)


PAPER_GLA = ROOT / "examples" / "gla.attn"     # gates sigmoid(x)^(1/16): at most 1
CHUNK_SPECS = {"gla": PAPER_GLA.read_text(), "retention": RETENTION, "no_gate": NO_GATE}


def _compiled(tmp_path, name):
    """(cascade, generated module) of one of CHUNK_SPECS."""
    return compiled_specs(tmp_path, {name: CHUNK_SPECS[name]}, "chunk")[name]


@pytest.mark.parametrize("name", CHUNK_SPECS)
def test_gates_at_most_one_compile_to_the_chunk_kernel(tmp_path, name):
    """One fused kernel walks the chunks (the state in registers), its contractions
    tl.dots: q k^T (a gate per head or none), the chunk's attention times V, the
    decayed keys times V into the state, the decayed queries times the state; GLA's
    decay per feature keeps its chunk attention a C x C x D sum, chunks of 16."""
    _, module = _compiled(tmp_path, name)
    schedule = module.SCHEDULE
    assert schedule["derived"] and "split T -> T1, T0 by C" in schedule["cascade"]
    (kernel,) = schedule["kernels"]
    assert kernel["form"] == "steps" and kernel["uses_dot"]
    assert [loop["var"] for loop in kernel["loops"]] == ["t1"]
    assert kernel["tensors"]["S_C"]["role"] == "carried"
    assert kernel["grid"]["batch"] == tuple(v for v in ("b", "h") if v != "h" or
                                            name != "no_gate")
    chunk = 16 if name == "gla" else 64
    assert f"C = {chunk}" in schedule["cascade"]
    assert kernel["dots"] == 4
    # The chunk's decays as exp2 (ex2.ftz on the GPU); with no gate, none (rule 4
    # writes no log-gates of 0).
    source = Path(module.__file__).read_text()
    loop = source[source.index(f"def {kernel['name']}("):source.index("TUNING_FUSED =")]
    assert ("tl.exp2(S_L" in loop) == (name != "no_gate")
    assert ("S_L" in schedule["cascade"]) == (name != "no_gate")


@pytest.mark.parametrize("spec, why", [
    (GLA, "not provably at most 1"),
    (SCALAR_GATE, "not provably at most 1"),
], ids=["gla log-gates as given", "a gate per head as given"])
def test_a_gate_that_may_exceed_1_keeps_the_recurrence_with_the_reason(spec, why):
    """exp of a chunk's summed log-gates overflows float32 past 88 where gates exceed
    1; the recurrence multiplies them into the state one step at a time."""
    from einsumattn.backends.module import Plan

    plan = Plan(einsumattn.load(spec))
    assert "S_C" not in plan.kernel.tensors and plan.triton.fused
    assert why in plan.summary()


def _run(module, cascade, inputs, dtype):
    import torch

    tensors = [torch.tensor(inputs[t.name]).to(getattr(torch, dtype))
               for t in cascade.inputs]
    layer = getattr(module, module.__all__[0])(backend="triton")
    return layer(*tensors).double().numpy()


def _references(name):
    """Hand-written torch references (tests/reference.py) of the specs."""
    import torch

    import reference as ref

    def causal_linear(q, k, v):
        mask = torch.tril(torch.ones(q.shape[-2], k.shape[-2], dtype=q.dtype))
        return (q @ k.transpose(-1, -2) * mask) @ v

    return {"gla": ref.gla,
            "retention": lambda q, k, v: ref.retention(q, k, v, scale=1.0),
            "no_gate": causal_linear}[name]


@pytest.mark.parametrize("length", [1, 17, 70])
@pytest.mark.parametrize("name", CHUNK_SPECS)
def test_the_chunk_kernel_matches_the_oracle_and_the_references(tmp_path, name, length):
    """float32, at lengths that are not a multiple of the chunk (16 for GLA, 64 for the
    others; 70 is two chunks of 64, five of 16): the oracle of the spec as written and a
    hand-written reference."""
    import torch

    cascade, module = _compiled(tmp_path, name)
    sizes = dict(B=1, H=2, T=length, D=5, F=3)
    inputs = _inputs(cascade, sizes, length)
    expected = evaluate(cascade, inputs)["O"]
    got = _run(module, cascade, inputs, "float32")
    reference = _references(name)(*(torch.tensor(inputs[t.name]) for t in cascade.inputs))
    # float32 against float64: sums of at most 70 products of values of order 1 and
    # decays <= 1, each rounding ~6e-8 relative (the tl.dots in float32 here).
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reference.numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("gate", [-60.0, 60.0], ids=["gates near 0", "gates near 1"])
def test_the_gla_chunk_kernel_at_extreme_gates(tmp_path, gate):
    """GX far below 0: logsigmoid(GX) / 16 about -3.75 a step, gates about 0.024 and a
    chunk's decays down to about 1e-26 (exponentials of non-positive numbers only: they
    underflow towards 0, never overflow); far above 0: gates within 1e-27 of 1, the
    state a plain running sum. float32 against the oracle, at an odd length."""
    import torch

    cascade, module = _compiled(tmp_path, "gla")
    inputs = _inputs(cascade, dict(B=1, H=1, T=37, D=5, F=3), 4)
    inputs["GX"] = gate + np.random.default_rng(4).normal(size=inputs["GX"].shape)
    expected = evaluate(cascade, inputs)["O"]
    got = _run(module, cascade, inputs, "float32")
    reference = _references("gla")(*(torch.tensor(inputs[t.name]) for t in cascade.inputs))
    # float32 against float64, as above (the tiny decayed terms beside ones of order 1
    # are below the absolute part of the tolerance either way).
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reference.numpy(), expected, rtol=1e-9, atol=1e-9)


def _relative_rmse(got, expected):
    """flash-linear-attention's comparison of a low-precision kernel: the RMS of the
    error over the RMS of the reference."""
    return float(np.sqrt(np.mean((got - expected) ** 2)) / np.sqrt(np.mean(expected ** 2)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", CHUNK_SPECS)
def test_the_chunk_kernel_in_half_precision(tmp_path, name, dtype):
    """float16/bfloat16 inputs at an odd length: within the oracle's bound, which adds
    the first-order effect of exactly the dot operands the kernel rounds
    (verify.compare with the module's DOT_ROUNDING), and the relative RMSE
    flash-linear-attention's chunk tests allow (0.005 for float16: the output's own
    rounding is 2**-11; 0.01 for bfloat16, 2**-8 = 0.0039 per rounded operand)."""
    from einsumattn.verify import compare, dot_rounding

    import torch

    cascade, module = _compiled(tmp_path, name)
    inputs = _inputs(cascade, dict(B=1, H=2, T=37, D=5, F=3), 1)
    inputs = {k: torch.tensor(v).to(getattr(torch, dtype)).double().numpy()
              for k, v in inputs.items()}          # what the kernel is given, exactly
    got = _run(module, cascade, inputs, dtype)
    results = compare(cascade, inputs, torch.tensor(got), dtype,
                      rounding=dot_rounding(cascade, module))
    assert all(r.ok for r in results), [r.describe() for r in results]
    bound = {"float16": 0.005, "bfloat16": 0.01}[dtype]
    assert _relative_rmse(got, evaluate(cascade, inputs)["O"]) < bound


def test_the_chunked_cascade_compiles_and_runs_on_torch_and_triton(tmp_path):
    import torch

    from einsumattn.codegen import compile_to_file
    from einsumattn.codegen.compile import import_file

    text = cascade_text(chunk_recurrences(einsumattn.load(GLA), 4)[0])
    spec = tmp_path / "gla_chunked.attn"
    spec.write_text(text)
    module = import_file(compile_to_file(spec, tmp_path), "gla_chunked")
    cascade = einsumattn.load(GLA)
    sizes = dict(B=1, H=2, T=9, D=3, F=2)
    inputs = _inputs(cascade, sizes, 5)
    expected = evaluate(cascade, inputs)["O"]
    tensors = [torch.tensor(inputs[t.name], dtype=torch.float32) for t in cascade.inputs]
    for backend in ("torch", "triton"):
        got = getattr(module, module.__all__[0])(backend=backend)(*tensors)
        # float32 against the float64 oracle: sums of at most 9 products of values of
        # order 1 and exponentials <= 1, each rounding ~6e-8 relative.
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gate_ranks, body, reason", [
    ("b, t, d", "S[b, t, d, f] * S[b, t, d, f] + K[b, t, d] * V[b, t, f]",
     "read twice"),
    ("b, t, d", "G[b, t, d] * S[b, t, d, f] + K[b, t, d] * V[b, t, f]",
     "not an exponential"),
    ("d, f", "exp(K[b, t, d]) * S[b, t, d, f] + K[b, t, d] * V[b, t, f] * G[d, f]",
     "not a product of a factor free of f"),
    ("b, t, f", "exp(G[b, t, f]) * S[b, t, d, f] + K[b, t, d] * V[b, t, f]",
     "depends on f"),
], ids=["quadratic", "a gate of any sign", "an update over d and f", "a gate over f"])
def test_what_is_not_linear_attention_s_recurrence_is_refused_with_its_reason(
        gate_ranks, body, reason):
    spec = f"""attention refused
dims  B, T, D, F
input Q[b, t, d], K[b, t, d], V[b, t, f], G[{gate_ranks}]
init S[b, 0, d, f] = 0
S[b, t+1, d, f] = {body}
O[b, t, f] = Q[b, t, d] * S[b, t+1, d, f]
output O
"""
    _, steps, blocked = chunk_recurrences(einsumattn.load(spec), 4)
    assert not steps and len(blocked) == 1 and reason in blocked[0].reason, blocked


@pytest.mark.parametrize("change, reason", [
    (("init S[b, 0, d, f] = 0", "init S[b, 0, d, f] = 1"), "does not start at 0"),
    (("O[b, t, f] = Q[b, t, d] * S[b, t+1, d, f]", "O[b, t, f] = Q[b, t, d] * S[b, t, d, f]"),
     "does not read S[.., t+1, ..]"),
    (("output O", "P[b, t, f] = K[b, t, d] * S[b, t+1, d, f]\noutput O, P"),
     "read by 2 Einsums"),
], ids=["a state that starts elsewhere", "the state before the step", "two readers"])
def test_a_state_read_otherwise_is_refused(change, reason):
    spec = NO_GATE.replace(*change)
    _, steps, blocked = chunk_recurrences(einsumattn.load(spec), 4)
    assert not steps and reason in blocked[0].reason, blocked


def test_a_gate_per_head_leaves_the_chunk_s_attention_a_plain_contraction():
    """With no feature rank in the gate, rule 0 (run again on what rule 4 wrote) moves
    the decay out of the sum over d: q k^T, a matrix product, times the decay."""
    cascade = einsumattn.load(SCALAR_GATE)
    result = rewrite(cascade, tile=4)
    scores = result.cascade.einsum("S_A_sum")
    assert scores.reduced == ("d",)
    assert {r.tensor for r in scores.accesses()} == {"Q", "K"}
    inputs = _inputs(cascade, dict(B=1, H=2, T=10, D=3, F=2), 1)
    np.testing.assert_allclose(evaluate(result.cascade, inputs)["O"],
                               evaluate(cascade, inputs)["O"], rtol=1e-10, atol=1e-12)


SIGNED = einsumattn.load("""attention signed
dims  T, S
input X[t], Y[s]
E[t] = exp(X[t])
M[t] = max[s] exp(Y[s] + X[t])
output E, M
""")
X = ir.Read("X", (ir.Index("t"),))


@pytest.mark.parametrize("expr, expected", [
    (ir.Op("logsigmoid", (X,)), -1),
    (ir.Op("/", (ir.Op("logsigmoid", (X,)), ir.Const(16))), -1),
    (ir.Op("neg", (ir.Op("softplus", (X,)),)), -1),
    (ir.Op("min", (X, ir.Const(0))), -1),
    (ir.Op("min", (ir.Op("exp", (X,)), ir.Const(0))), 0),      # min(>= 0, 0) is 0
    (ir.Op("max", (X, ir.Const(0))), 1),
    (ir.Read("E", (ir.Index("t"),)), 1),                        # exp(X), through E
    (ir.Read("M", (ir.Index("t"),)), None),   # a max: -inf where it reduces nothing
    (X, None),
    (ir.Op("-", (X, X)), None),           # structural: not proved 0
    (ir.Op("/", (ir.Const(1), ir.Op("-", (ir.Dim("T"), ir.Dim("T"))))), None),  # 1 / 0
    (ir.Op("log", (ir.Op("-", (ir.Const(1), ir.Op("**", (ir.Const(2), ir.Op("-", (
        ir.Const(-5), ir.Index("t"))))))),)), -1),              # RetNet's log-decay
    (ir.Op("log", (ir.Op("exp", (X,)),)), None),
    (ir.Op("where", (ir.Op("<", (X, ir.Const(0))), X, ir.Const(-1.0))), None),
    (ir.Op("where", (ir.Op("<", (X, ir.Const(0))), ir.Op("logsigmoid", (X,)),
                     ir.Const(-1.0))), -1),
], ids=lambda value: ir.to_text(value) if isinstance(value, ir.Expr) else str(value))
def test_sign_proves_only_what_holds(expr, expected):
    """The sign analysis rule 4's kernel choice (log-gates <= 0) and the canonical
    form's log rule (y >= 0) share: each claim holds at every value, and what it cannot
    prove it says so (None)."""
    from einsumattn.transform.algebra import sign

    assert sign(SIGNED, expr) == expected
