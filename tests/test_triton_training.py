"""`loss.backward()` through every backend of a generated module: the Triton backends'
autograd function (the kernels forward, the torch backend differentiated backward)
against the gradient cascade (transform/grad.py) evaluated by the float64 oracle, with
the check's own tolerance; rows that see no key get zero gradients."""

import warnings

import pytest
import torch

import einsumattn
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.transform.grad import gradient
from einsumattn.verify import Case, case_inputs, compare, drawn_ranks

from conftest import ROOT

EXAMPLES = ["softmax_3pass", "causal_softmax", "gqa", "alibi", "sigmoid_attention",
            "linear_attention", "softcap", "eca", "diff_transformer", "relu_attention",
            "clipped_softmax", "neighborhood_1d", "neighborhood_2d", "squeeze_excitation",
            "retention",
            "softpick", "normalized_attention", "cbam", "aaren", "efficient_attention",
            "cosine_attention"]
SIZES = dict(B=1, H=2, KH=1, P=9, M=11, E=4, F=3, C=5, W=3, K=3, D=3, R=2)


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("training")
    return {name: (einsumattn.load(ROOT / "examples" / f"{name}.attn"),
                   import_file(compile_to_file(ROOT / "examples" / f"{name}.attn", folder),
                               f"training_{name}"))
            for name in EXAMPLES}


def _backward(module, cascade, inputs: dict, cotangents: list, backend: str) -> list:
    leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = getattr(module, module.__all__[0])(backend=backend)(*leaves.values())
    out = out if isinstance(out, tuple) else (out,)
    sum((o.float() * c).sum() for o, c in zip(out, cotangents)).backward()
    return leaves


@pytest.mark.parametrize("backend", ["triton", "triton-unfused", "torch", "reference"])
@pytest.mark.parametrize("name", EXAMPLES)
def test_backward_matches_the_gradient_cascade(modules, name, backend):
    cascade, module = modules[name]
    grad = gradient(cascade)
    inputs, cotangents = _float32_case(cascade, _sizes(cascade), False, 5, 7)
    leaves = _backward(module, cascade, inputs, cotangents, backend)
    assert _agrees_with_the_gradient_cascade(grad, inputs, cotangents, leaves)


def _sizes(cascade) -> dict:
    return {r: SIZES.get(r, 3) for r in drawn_ranks(cascade)}


def _float32_case(cascade, sizes: dict, contiguous: bool, seed: int, cotangent_seed: int):
    """Random float32 inputs of `sizes` and a random cotangent per output."""
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, contiguous, seed))
    generator = torch.Generator().manual_seed(cotangent_seed)
    outputs = einsumattn.evaluate(cascade, inputs)
    cotangents = [torch.randn(tuple(outputs[o].shape), generator=generator,
                              dtype=torch.float32) for o in cascade.outputs]
    return inputs, cotangents


def _agrees_with_the_gradient_cascade(grad, inputs, cotangents, leaves) -> bool:
    """The leaves' gradients against the gradient cascade's, by the check's rule."""
    got = tuple(leaves[x].grad for x in grad.gradients)
    assert all(g is not None for g in got)
    everything = {**inputs, **{grad.cotangents[o]: c
                               for o, c in zip(grad.forward.outputs, cotangents)}}
    return all(r.ok for r in compare(grad.cascade, everything, got, "float32"))


def test_rows_that_see_no_key_train_to_zero_gradients(tmp_path):
    spec = tmp_path / "shifted.attn"
    spec.write_text((ROOT / "examples" / "causal_softmax.attn").read_text()
                    .replace("where m <= p", "where m + 2 <= p"))
    cascade = einsumattn.load(spec)
    module = import_file(compile_to_file(spec, tmp_path / "out"), "training_shifted")
    inputs = case_inputs(cascade, Case(dict(B=1, H=1, P=6, M=6, E=4, F=3), "float32", 1.0,
                                       False, 0))
    cotangent = torch.ones(1, 1, 6, 3)
    for backend in ("triton", "torch"):
        leaves = _backward(module, cascade, inputs, [cotangent], backend)
        dq = leaves["Q"].grad
        assert torch.isfinite(dq).all() and (dq[:, :, :2] == 0).all(), backend


# stick_breaking: its saving forward does not fuse (Z read at another key's position), so
# backward() is the torch backend's autograd; its derived gradient is tests/test_grad.py's.
FINITE_DIFFERENCE_EXAMPLES = ["gla_recurrent", "gla", "softmax_1pass",
                              "sliding_window_sinks", "stick_breaking"]


def test_every_example_trains_in_a_test():
    """Every example's backward() is checked on every backend by one of the two tests."""
    examples = {path.stem for path in (ROOT / "examples").glob("*.attn")}
    assert examples <= set(EXAMPLES) | set(FINITE_DIFFERENCE_EXAMPLES)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("name", FINITE_DIFFERENCE_EXAMPLES)
def test_backward_matches_finite_differences_of_the_oracle(tmp_path, name, backend):
    """The recurrent examples and one not listed above: backward() against central
    differences of the float64 oracle along a random direction, independent of any
    derivation."""
    spec = ROOT / "examples" / f"{name}.attn"
    cascade = einsumattn.load(spec)
    module = import_file(compile_to_file(spec, tmp_path), f"training_fd_{name}")
    inputs = case_inputs(cascade, Case(_sizes(cascade), "float32", 1.0, False, 2))
    generator = torch.Generator().manual_seed(3)
    outputs = einsumattn.evaluate(cascade, inputs)
    cotangents = [torch.randn(tuple(outputs[o].shape), generator=generator,
                              dtype=torch.float64) for o in cascade.outputs]
    direction = {k: torch.randn(v.shape, generator=generator, dtype=torch.float64)
                 for k, v in inputs.items() if v.is_floating_point()}

    def loss(t):
        moved = {k: v.double() + t * direction[k] if k in direction else v
                 for k, v in inputs.items()}
        out = einsumattn.evaluate(cascade, moved)
        return sum((torch.as_tensor(out[o]) * c).sum()
                   for o, c in zip(cascade.outputs, cotangents))

    eps = 1e-6            # central differences in float64: about 1e-10 relative
    finite = float((loss(eps) - loss(-eps)) / (2 * eps))
    leaves = _backward(module, cascade, inputs, [c.float() for c in cotangents], backend)
    analytic = sum(float((leaves[k].grad.double() * d).sum()) for k, d in direction.items())
    # float32 forward and backward: about 1e-5 relative over these few hundred terms
    assert analytic == pytest.approx(finite, rel=1e-4, abs=1e-4)


def test_check_compares_gradients_and_catches_a_wrong_backward(modules, monkeypatch):
    from einsumattn.verify import run_check

    cascade, module = modules["causal_softmax"]
    said = []
    assert run_check(cascade, module, ("triton",), examples=6, report=said.append)
    assert any(line.endswith("gradients: ok") for line in said)
    backward = module._TritonTrained.backward

    def wrong(ctx, *cotangents):
        return tuple(None if g is None else 1.01 * g for g in backward(ctx, *cotangents))

    monkeypatch.setattr(module._TritonTrained, "backward", staticmethod(wrong))
    said.clear()
    assert not run_check(cascade, module, ("triton",), examples=6, report=said.append,
                         shrink=False)
    assert any("gradients: MISMATCH" in line for line in said)


# ---------------------------------------------------------------- the backward's kernels
KERNEL_TRAINED = ["causal_softmax", "softmax_3pass", "alibi", "softcap",
                  "sliding_window_sinks", "sigmoid_attention", "linear_attention", "eca", "gqa",
                  "softmax_1pass", "diff_transformer", "relu_attention", "neighborhood_1d",
                  "retention", "efficient_attention", "softpick", "squeeze_excitation",
                  "cosine_attention", "neighborhood_2d"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Modules compiled with train=True (the backward's kernels), each with a count of
    the calls of its backward kernels, so that a test knows they ran."""
    folder = tmp_path_factory.mktemp("trained")
    result = {}
    for name in KERNEL_TRAINED:
        path = compile_to_file(ROOT / "examples" / f"{name}.attn", folder, train=True)
        module = import_file(path, f"trained_{name}")
        calls = []
        original = module._triton_backward

        def counted(*args, original=original, calls=calls):
            calls.append(1)
            return original(*args)

        module._triton_backward = counted
        result[name] = (einsumattn.load(ROOT / "examples" / f"{name}.attn"), module, calls)
    return result


@pytest.mark.parametrize("name", KERNEL_TRAINED)
@pytest.mark.parametrize("seed", [5, 6])
def test_the_backward_kernels_match_the_gradient_cascade(trained, name, seed):
    cascade, module, calls = trained[name]
    assert module.SCHEDULE["training"]["reason"] is None
    grad = gradient(cascade)
    sizes = _sizes(cascade)
    if seed == 6:                                   # more than one tile of 16
        sizes.update({r: n for r, n in (("P", 21), ("M", 19), ("C", 19)) if r in sizes})
    inputs, cotangents = _float32_case(cascade, sizes, seed == 6, seed, seed)
    before = len(calls)
    leaves = _backward(module, cascade, inputs, cotangents, "triton")
    assert len(calls) == before + 1               # the kernels ran, not the torch backend
    assert _agrees_with_the_gradient_cascade(grad, inputs, cotangents, leaves)


def test_the_backward_kernels_give_rows_without_keys_zero_gradients(tmp_path):
    spec = tmp_path / "shifted.attn"
    spec.write_text((ROOT / "examples" / "causal_softmax.attn").read_text()
                    .replace("where m <= p", "where m + 2 <= p"))
    cascade = einsumattn.load(spec)
    module = import_file(compile_to_file(spec, tmp_path / "out", train=True),
                         "trained_shifted")
    assert module.SCHEDULE["training"]["reason"] is None
    inputs = case_inputs(cascade, Case(dict(B=1, H=1, P=6, M=6, E=4, F=3), "float32", 1.0,
                                       False, 0))
    leaves = _backward(module, cascade, inputs, [torch.ones(1, 1, 6, 3)], "triton")
    dq, dk = leaves["Q"].grad, leaves["K"].grad
    assert torch.isfinite(dq).all() and (dq[:, :, :2] == 0).all()
    assert torch.isfinite(dk).all() and (dk[:, :, 4:] == 0).all()


def test_the_backward_kernels_are_deterministic(trained):
    """No atomic adds: the keys of a stage are never split over programs (the knob is
    pinned to 1), so two backward passes give the same bits."""
    cascade, module, _ = trained["sigmoid_attention"]
    splits = [k for k in module.SCHEDULE["training"]["kernels"] if k["splits"]]
    assert all(module.TUNING_FUSED[k["name"]][k["splits"]] == 1 for k in splits)
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=9, M=11, E=4, F=3), "float32", 1.0,
                                       False, 1))
    first = _backward(module, cascade, inputs, [torch.ones(1, 2, 9, 3)], "triton")
    second = _backward(module, cascade, inputs, [torch.ones(1, 2, 9, 3)], "triton")
    assert all(torch.equal(first[k].grad, second[k].grad) for k in first)


def test_without_train_there_are_no_backward_kernels(modules):
    _, module = modules["causal_softmax"]
    assert module.SCHEDULE["training"] == {"reason": "compiled without --train"}
    assert not hasattr(module, "_triton_backward")


def test_backward_kernels_take_the_backward_rule_and_train_at_its_tiles(trained):
    """On a GPU the backward's kernels (three or more products per key tile) take the
    backward rule (64 x 64, where 128 rows spill) and the forward its own; at that rule's
    tiles, pinned, the kernels train correctly in the interpreter past one tile."""
    from test_configs import configured

    cascade, module, _ = trained["causal_softmax"]
    rule = next(r for r in module.CONFIG_RULES if r["dots"])
    names = {k["name"]: k for k in module.SCHEDULE["training"]["kernels"]}
    dq = next(n for n in names if n.endswith("_dQ__fused"))
    dkdv = next(n for n in names if n.endswith("_dK_dV__fused"))
    cpu = torch.device("cpu")
    with configured(module, CONFIG_TARGET=("cuda", 90)):
        for name in (dq, dkdv):
            config = module._tuning(name, 4096, 4096, 64, "bfloat16", cpu, launch=None)
            knobs = names[name]
            assert config[knobs["grid"]["row_tile"]] == rule["rows"]
            assert config[knobs["loops"][0]["tile"]] == rule["keys"]
            assert (config["num_warps"], config["num_stages"]) == (rule["warps"], rule["stages"])
        forward = module._tuning("causal_softmax_saving__fused", 4096, 4096, 64, "bfloat16",
                                 cpu, launch=None)
        assert forward["p__BLOCK"] == 128
    pins = {name: {names[name]["grid"]["row_tile"]: rule["rows"],
                   names[name]["loops"][0]["tile"]: rule["keys"]} for name in (dq, dkdv)}
    with configured(module, TUNING_FUSED={**module.TUNING_FUSED, **pins}):
        grad = gradient(cascade)
        sizes = dict(B=1, H=1, P=rule["rows"] + 5, M=rule["keys"] + 7, E=8, F=8)
        inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, False, 4))
        cotangents = [torch.randn(1, 1, sizes["P"], 8,
                                  generator=torch.Generator().manual_seed(4))]
        leaves = _backward(module, cascade, inputs, cotangents, "triton")
        assert _agrees_with_the_gradient_cascade(grad, inputs, cotangents, leaves)


def test_a_backward_that_would_keep_a_quadratic_buffer_trains_through_torch(tmp_path,
                                                                           monkeypatch):
    """Without the partial sums, GQA's dK and dV (sums over the query heads of a group
    and the queries) do not fit the attention schedule, and the loop schedule would pass
    the probabilities (P x M) between its kernels. Training memory must stay O(N): no
    backward kernels then, and the reason says why; backward() still works (the torch
    backend differentiated)."""
    from einsumattn.schedule import training

    monkeypatch.setattr(training, "_partial", lambda *args: None)
    spec = ROOT / "examples" / "gqa.attn"
    module = import_file(compile_to_file(spec, tmp_path, train=True), "untrained_gqa")
    reason = module.SCHEDULE["training"]["reason"]
    assert "a value per point of both M and H" in reason and "linear in each" in reason
    assert not hasattr(module, "_triton_backward")
    cascade = einsumattn.load(spec)
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, KH=1, P=5, M=6, E=4, F=3), "float32",
                                       1.0, False, 0))
    cotangents = [torch.ones(1, 2, 5, 3)]
    leaves = _backward(module, cascade, inputs, cotangents, "triton")
    assert _agrees_with_the_gradient_cascade(gradient(cascade), inputs, cotangents, leaves)


@pytest.mark.parametrize("heads", [(4, 2), (5, 2), (3, 3)])
def test_gqa_trains_by_kernels_with_the_heads_of_a_group_summed(trained, heads):
    """GQA's dK and dV: per query head in the dK/dV kernel, then summed over the heads
    of each group by a kernel of its own (no atomics); groups of 2, uneven groups (H=5,
    KH=2: 3 and 2 heads) and groups of one."""
    cascade, module, calls = trained["gqa"]
    assert module.SCHEDULE["training"]["partials"] == {"dK": "dK_p", "dV": "dV_p"}
    H, KH = heads
    sizes = dict(B=2, H=H, KH=KH, P=21, M=19, E=4, F=3)
    inputs, cotangents = _float32_case(cascade, sizes, False, H, KH)
    before = len(calls)
    leaves = _backward(module, cascade, inputs, cotangents, "triton")
    assert len(calls) == before + 1
    assert _agrees_with_the_gradient_cascade(gradient(cascade), inputs, cotangents, leaves)


LEARNED_SLOPES = (ROOT / "examples" / "alibi.attn").read_text() \
    .replace("input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]",
             "input Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f], SLOPE[h]") \
    .replace("2 ** (-8 * (h + 1) / H)", "SLOPE[h]")


def test_a_learnable_per_head_input_trains_by_kernels(tmp_path):
    """ALiBi with its slopes an input: dSLOPE sums over the batch, the queries and the
    keys. The dQ kernel computes it per query row (the partial sum over the keys) and
    a small kernel sums the rows per head: no atomics, no P x M buffer."""
    spec = tmp_path / "learned.attn"
    spec.write_text(LEARNED_SLOPES)
    assert "SLOPE[h]" in LEARNED_SLOPES and "2 **" not in LEARNED_SLOPES
    cascade = einsumattn.load(spec)
    module = import_file(compile_to_file(spec, tmp_path / "out", train=True), "learned")
    training = module.SCHEDULE["training"]
    assert training["reason"] is None
    assert training["partials"] == {"dSLOPE": "dSLOPE_m"}
    assert ["dQ", "dSLOPE_m"] in training["stages"]
    for seed, (P, M) in ((0, (9, 11)), (1, (21, 19))):
        sizes = dict(B=2, H=3, P=P, M=M, E=4, F=3)
        inputs, cotangents = _float32_case(cascade, sizes, seed == 1, seed, seed)
        inputs["SLOPE"] = inputs["SLOPE"].abs()    # ALiBi's slopes * (m - p) <= 0 damp distant keys
        leaves = _backward(module, cascade, inputs, cotangents, "triton")
        assert _agrees_with_the_gradient_cascade(gradient(cascade), inputs, cotangents, leaves)


def test_check_compares_the_backward_kernels_in_16_bits_and_catches_a_wrong_one(
        trained, monkeypatch):
    """In float16/bfloat16 cases `check` runs the backward's kernels on what the training
    forward saved and compares them with the backward they compute (the oracle on the
    same saved values), the tolerance widened by their rounded dot operands only: a
    backward 1% off fails."""
    from einsumattn.verify import _backward_kernels, run_check

    cascade, module, _ = trained["causal_softmax"]
    said = []
    assert run_check(cascade, module, ("triton",), examples=6, report=said.append)
    assert any("16, " in line and line.endswith("backward kernels: ok") for line in said)
    training = module.SCHEDULE["training"]
    case = Case(dict(B=1, H=2, P=19, M=21, E=16, F=16), "bfloat16", 1.0, True, 3)
    inputs = case_inputs(cascade, case)
    _, _, results = _backward_kernels(module, training, inputs, case)
    assert all(r.ok for r in results)
    backward = module._triton_backward

    def wrong(*args):
        return tuple(None if g is None else 1.01 * g for g in backward(*args))

    monkeypatch.setattr(module, "_triton_backward", wrong)
    _, _, results = _backward_kernels(module, training, inputs, case)
    assert not all(r.ok for r in results)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_later_stage_reads_the_statistics_as_a_rounded_buffer(trained, dtype):
    """A later stage's dot that reads what an earlier stage wrote (linear attention's
    dV takes the statistics stage's float32 dKV_NUM) counts that operand's rounding.
    Those stages used to read it as an exact input: no rounding in the tolerance, a
    float16 tile of a float32 value, and `check --train` failed on softmax_1pass in
    float16 (its backward then divided before V, dAV / RD, a statistics stage's buffer;
    it now has FlashAttention-2's form, docs/gradients.md rule 0b). A buffer is rounded
    (counted) or, in float16, read as float32 tiles."""
    from einsumattn.verify import _backward_kernels

    cascade, module, _ = trained["linear_attention"]
    training = module.SCHEDULE["training"]
    assert training["stages"][0] == ["dKS_DEN", "dKV_NUM"]
    assert training["rounded"]["dV"] == 2
    case = Case(dict(B=1, H=1, P=3, M=3, E=2, F=3), dtype, 1.0, False, 0)
    _, _, results = _backward_kernels(module, training, case_inputs(cascade, case), case)
    assert all(r.ok for r in results), [r.describe() for r in results]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_softpick_s_backward_kernels_agree_in_16_bits(trained, dtype):
    """softpick's backward once kept its max's cotangent and the tie rule, which compares
    the scores the backward recomputes with the max the forward saved: in float16 they
    differed by a rounding, no key tied, and dQ divided by a count of 0 (inf, the
    smallest case `check --train` found). Its clamped max now cancels (rule 1,
    docs/gradients.md) and the kernels agree in 16 bits."""
    from einsumattn.verify import _backward_kernels

    cascade, module, _ = trained["softpick"]
    training = module.SCHEDULE["training"]
    for case in (Case(dict(B=1, H=1, P=1, M=1, E=8, F=1), dtype, 1.0, True, 0),
                 Case(dict(B=1, H=2, P=19, M=19, E=8, F=3), dtype, 1.0, False, 3)):
        _, _, results = _backward_kernels(module, training, case_inputs(cascade, case),
                                          case)
        assert all(r.ok for r in results), [r.describe() for r in results]


def test_a_statistic_over_several_ranks_is_a_partial_sum_then_its_total(trained):
    """The Differential Transformer's dLAM[h] sums over the batch, the queries and the
    keys, a statistic every later stage reads: the statistics stage (one kernel over the
    query rows) computes it per row, a kernel of its own totals it per head, and the
    stages after read the total. Without the split the statistics stage was not
    scheduled and the module trained through torch."""
    _, module, _ = trained["diff_transformer"]
    training = module.SCHEDULE["training"]
    assert training["reason"] is None
    assert training["partials"] == {"dLAM_A": "dLAM_A_m"}
    assert training["stages"][:2] == [["dD1_A", "dLAM_A_m", "dD2_A"], ["dLAM_A"]]


@pytest.mark.parametrize("name", ["linear_attention", "gqa"])
def test_a_trained_module_is_the_same_bytes_under_any_hash_seed(tmp_path, name):
    """The backward's stages took their saved inputs in a set's order, which Python's
    string hashing changes from run to run: linear_attention's dK kernel got its
    arguments in either order. The generated module must not depend on it."""
    import subprocess
    import sys

    sources = []
    for seed in ("0", "2", "3"):            # three different modules before the fix
        out = tmp_path / seed
        subprocess.run([sys.executable, "-m", "einsumattn", "compile", "--train",
                        str(ROOT / "examples" / f"{name}.attn"), "-o", str(out)],
                       check=True, capture_output=True,
                       env={**__import__("os").environ, "PYTHONHASHSEED": seed})
        sources.append((out / f"{name}.py").read_bytes())
    assert sources[0] == sources[1] == sources[2]


def test_statistics_over_different_ranks_are_stages_in_the_order_they_read_each_other():
    """Efficient Attention's backward has per-row statistics that reduce different
    ranks, and some read others: no one kernel computes them all (`QM does not have
    every parallel rank`), so they are stages in dependency order, each a fused
    schedule, and the module trains by kernels (it trained through torch before)."""
    from einsumattn.schedule.training import training_stages
    from einsumattn.transform.backward import fast_backward

    backward = fast_backward(einsumattn.load(ROOT / "examples" / "efficient_attention.attn"))
    stages = training_stages(backward.cascade, backward.streamed).stages
    levels = [s for s in stages if "statistics" in s.name]
    assert [s.name.rsplit("_", 1)[1] for s in levels] == \
        ["statistics"] + [f"statistics{n}" for n in range(2, len(levels) + 1)]
    assert len(levels) > 1 and stages[:len(levels)] == tuple(levels)
    computed: set[str] = set()
    for level in levels:
        # each level reads what earlier levels wrote as buffers, never a later level's
        assert {n for n, t in level.tensors.items() if t.buffer} <= computed
        assert set(level.outputs).isdisjoint(computed)
        computed |= set(level.outputs)
