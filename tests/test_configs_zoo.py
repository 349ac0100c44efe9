"""Every configuration the heuristic can pick (einsumattn/schedule/configs.py), on the
examples whose kernels it shapes differently, against the float64 oracle in Triton's
interpreter at small sizes (issue 12: "every kernel still matches the oracle in the
interpreter at small shapes for every configuration the heuristic can pick").
tests/test_configs.py runs causal_softmax's forward at each; this file runs the rest.

* Forward: every distinct configuration a GPU rule picks for a forward kernel
  (test_configs.PICKED: 8) on nine examples, each for what the tiles meet in it:
  sigmoid_attention (the keys split over programs: its float32 cases are long enough
  for two splits), gqa (the query heads of a group packed into the row tile), alibi (a
  per-head bias in the scores), softcap, sliding_window_sinks and neighborhood_1d
  (window bounds: skipped tiles), retention (a decay), linear_attention (two kernels:
  one whose row tile is over the head dim E, one whose key tile is) and
  diff_transformer (two stages, the second with four products per key tile: in 16 bits
  on Ampere and later it takes the backward's rules, 64 x 64 and 64 x 32, so its cases
  are the 5 configurations the heuristic can give it, never 128 rows). Every
  combination runs: 8 x 8 + 5 = 69 cases (no rotation of examples was needed).
* Backward: every distinct configuration a backward rule picks (64 x 64: dQ and dK/dV
  at d <= 64, dQ at d <= 128; 64 x 32: dK/dV at d <= 128), training causal_softmax and
  gqa through `Cls(backend="triton")` in 16 bits; both configurations on both examples,
  every backward rule selected (4 cases; P = 67 and M = 72, past one 64-row tile in both
  kernels' rows and keys; gqa H = 2, KH = 1). The output, the saved log-sum-exp and the
  gradients are checked as `einsumattn check` checks a 16-bit case of a trained module.

The GPU's choice is forced with CONFIG_TARGET and selected, as on that GPU, by the
inputs' dtype and head dim (E = F), never pinned; `_tuning` is recorded, and each test
asserts that every kernel ran at its rule's tiles, warps and stages (the tiles capped at
the sequence's own size, as the module caps them) and that the configuration under
test ran uncapped. Where several rules pick one configuration, the cases rotate among
them, among a rule's dtypes, and between contiguous and transposed inputs (which, on a
Hopper target, decides TMA loads): every GPU rule runs. Sizes: one tile and a partial
tile past it in rows and keys (P = rows + 3, M = keys + rows + 3, as test_configs);
B = 1; H = 2 where the head enters the math (alibi, retention, diff_transformer), else
1; gqa H = 4, KH = 2 (tests/test_examples.py's GQA_SHAPES), P = rows / 2 + 3 (its
packed rows: a tile and 6); the splitting examples in float32 M = 8 keys + rows + 3.

Every kernel must also keep its live loads and stores inside its tensors (an access
outside is a fault or garbage on a GPU, and the interpreter does not fault): the
results are checked first, then the addresses. This found two kernels reading past their
tensors with right results (linear attention's second stage loaded Q, and the backward's
statistics kernel dAV and AV, without the row mask in their loops without masks; fixed
in schedule/interior.py's without_masks, which keeps a load's row mask).

A GPU picks its own rule (the suite's other tests run them there), so on a GPU these
tests are skipped, as test_configs' is.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch

import einsumattn
from einsumattn.schedule.configs import RULES
from einsumattn.verify import Case, DotRounding, case_inputs, compare, dot_rounding, \
    drawn_ranks, representable

from conftest import GPU, ROOT, compiled_specs
from test_configs import PICKED, configured
from test_triton_ranges import assert_inside_the_tensors, outside_the_tensors
from test_triton_training import _backward

ON_GPU = "the GPU picks its own rule: the suite runs them there"


# ------------------------------------------------------------------- the heuristic

def rule_for(capability: int, dtype: str, head_dim: int, dots: int):
    """The rule a kernel with `dots` products per key tile takes on a GPU of this compute
    capability, for inputs of `dtype` and this head dim: RULES' first match, as
    docs/codegen.md ("Configurations per call") states it (written again here, not read
    from the module, so that the module's choice is checked against it)."""
    return next(r for r in RULES if r.device == "cuda" and capability >= r.capability
                and dtype in r.dtypes and head_dim <= r.head_dim and dots >= r.dots)


def config_of(rule) -> tuple:
    return rule.rows, rule.keys, rule.warps, rule.stages


def selector_of(rule, turn: int) -> tuple[int, str, int]:
    """A GPU (compute capability), dtype and head dim that select `rule`, as PICKED
    selects them (before Ampere: a Volta; a rule for any head dim: 160, a 256-wide
    tile); `turn` rotates among the rule's dtypes."""
    return (rule.capability or 70, rule.dtypes[turn % len(rule.dtypes)],
            min(rule.head_dim, 160))


def _pow2_at_least(n: int, least: int) -> int:
    return max(least, 1 << max(0, n - 1).bit_length())


GPU_RULES = [r for r in RULES if r.device == "cuda"]
BACKWARD_RULES = [r for r in GPU_RULES if r.dots]
FORWARD_CONFIGS = [config for config, _ in PICKED]
# Each forward configuration with the rules that pick it, in RULES' order.
PICKING = {config: [r for r in GPU_RULES if not r.dots and config_of(r) == config]
           for config in FORWARD_CONFIGS}


# ------------------------------------------------------------------- the cases

FORWARD_EXAMPLES = ["sigmoid_attention", "gqa", "alibi", "softcap", "sliding_window_sinks",
                    "neighborhood_1d", "retention", "linear_attention", "diff_transformer"]
# Products per key tile of an example's attention kernel where it is not 2, as its
# SCHEDULE says (a stale entry that changes the rule names tiles the kernel does not run
# at: assert_ran_at_the_rules_tiles fails those cases).
ATTENTION_DOTS = {"linear_attention": 1, "diff_transformer": 4}
# The examples whose math reads the head index (a per-head slope, decay or lambda).
PER_HEAD = {"alibi", "retention", "diff_transformer"}
# Examples whose kernels split the keys over programs (SCHEDULE's "splits"): in float32
# (16-bit outputs take one split) their cases have 8 key tiles or more, for two splits.
SPLITTING = {"sigmoid_attention", "linear_attention"}


def _forward_cases():
    cases = []
    for i, name in enumerate(FORWARD_EXAMPLES):
        seen = set()
        for j, config in enumerate(FORWARD_CONFIGS):
            rules = PICKING[config]
            selector = selector_of(rules[(i + j) % len(rules)], i + j)
            # The configuration the example's attention kernel takes there.
            taken = config_of(rule_for(*selector, ATTENTION_DOTS.get(name, 2)))
            if taken in seen:
                continue
            seen.add(taken)
            cases.append(pytest.param(
                name, taken, selector, (i + j) % 2 == 0, len(cases),
                id=f"{name}-{'x'.join(map(str, taken))}-sm{selector[0]}-{selector[1]}"
                   f"-d{selector[2]}"))
    return cases


FORWARD_CASES = _forward_cases()

# (capability, dtype, head dim): at d 64 both backward kernels take the first backward
# rule, 64 x 64; at d 128 the dQ kernel (3 products) 64 x 64 and the dK/dV kernel (4)
# 64 x 32. Ampere and Hopper, float16 and bfloat16 alternate between the examples.
BACKWARD_CASES = [
    pytest.param(name, selector, seed,
                 id=f"{name}-sm{selector[0]}-{selector[1]}-d{selector[2]}")
    for seed, (name, selector) in enumerate([
        ("causal_softmax", (80, "float16", 64)), ("causal_softmax", (90, "bfloat16", 128)),
        ("gqa", (90, "bfloat16", 64)), ("gqa", (80, "float16", 128))])]


def test_the_cases_cover_every_configuration_rule_and_example():
    """Each case's selector selects the configuration it names; every forward
    configuration runs on every example whose attention kernel can take it (all but
    diff_transformer's four products), which gets every configuration any GPU rule gives
    such a kernel; every GPU rule is selected; the backward cases run both backward
    configurations on both examples."""
    by_config, by_example, selected = {}, {}, set()
    for case in FORWARD_CASES:
        name, config, selector, _, _ = case.values
        rule = rule_for(*selector, ATTENTION_DOTS.get(name, 2))
        assert config_of(rule) == config
        selected.add(rule_for(*selector, 0))
        by_config.setdefault(config, set()).add(name)
        by_example.setdefault(name, set()).add(config)
    missing = set(FORWARD_CONFIGS) - set(by_config)
    assert not missing, f"configurations no case's selector selects: {missing}"
    two_products = {n for n in FORWARD_EXAMPLES if ATTENTION_DOTS.get(n, 2) < 3}
    assert all(by_config[c] >= two_products for c in FORWARD_CONFIGS)
    for name in set(FORWARD_EXAMPLES) - two_products:
        dots = ATTENTION_DOTS[name]
        assert by_example[name] == {config_of(rule_for(*selector_of(r, t), dots))
                                    for r in GPU_RULES for t in range(3)}
    assert all(len(names) >= 2 for names in by_config.values())
    assert all(len(configs) >= 2 for configs in by_example.values())
    backward = {}
    for case in BACKWARD_CASES:
        name, selector, _ = case.values
        for dots in (3, 4):          # the dQ kernel's products, the dK/dV kernel's
            backward.setdefault(rule_for(*selector, dots), set()).add(name)
    assert selected | set(backward) == set(GPU_RULES)
    assert set(backward) == set(BACKWARD_RULES)
    assert {config_of(r) for r in backward} == {config_of(r) for r in BACKWARD_RULES}
    assert all(names == {"causal_softmax", "gqa"} for names in backward.values())


# ------------------------------------------------------------------- the runs

@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(cascade, module) of an example, compiled on its first use in this file (train:
    with the backward's kernels)."""
    folder = tmp_path_factory.mktemp("configs_zoo")
    found = {}

    def get(name: str, train: bool = False):
        if (name, train) not in found:
            kind = "trained" if train else "forward"
            (folder / kind).mkdir(exist_ok=True)
            text = (ROOT / "examples" / f"{name}.attn").read_text()
            (found[name, train],) = compiled_specs(folder / kind, {name: text},
                                                   f"configs_zoo_{kind}", train=train).values()
        return found[name, train]
    return get


@contextlib.contextmanager
def on_the_gpu(module, capability: int):
    """The module choosing as on a GPU of `capability`. Yields what each kernel was
    launched with (name -> rows, keys, head dim, dtype, configuration), the key splits
    the host chose, and the kernels' accesses outside their tensors."""
    launched, splits = {}, []
    tuning, splitting = module._tuning, module._splits

    def record(kernel, rows, keys, head_dim, dtype, device, launch):
        config = tuning(kernel, rows, keys, head_dim, dtype, device, launch)
        launched[kernel] = (rows, keys, head_dim, str(dtype).removeprefix("torch."),
                            dict(config))
        return config

    def split(*args):
        splits.append(splitting(*args))
        return splits[-1]

    with configured(module, CONFIG_TARGET=("cuda", capability), _tuning=record,
                    _splits=split), outside_the_tensors() as outside:
        yield launched, splits, outside


def assert_ran_at_the_rules_tiles(module, launched, capability, dtype, config):
    """Every kernel launched at its rule's tiles (each capped at its sequence's own size,
    a power of two, at least 16 for a dot), warps and stages for the inputs' dtype; and
    `config`'s row tile and key tile uncapped in kernels that took it."""
    schedules = {k["name"]: k for k in (*module.SCHEDULE["kernels"],
                                        *module.SCHEDULE.get("training", {}).get("kernels", ()))}
    assert launched
    rows_ran = keys_ran = False
    for kernel, (rows, keys, head_dim, seen_dtype, got) in launched.items():
        schedule = schedules[kernel]
        assert seen_dtype == dtype, kernel
        rule = rule_for(capability, dtype, head_dim, schedule["dots"])
        least = 16 if schedule["uses_dot"] else 1
        pinned = module.TUNING_FUSED[kernel]
        row_knob, key_knob = schedule["grid"]["row_tile"], schedule["loops"][0]["tile"]
        for knob, want, size in ((row_knob, rule.rows, rows), (key_knob, rule.keys, keys)):
            want = want or schedule["knobs"][knob]["default"]
            expected = pinned[knob] if pinned.get(knob) is not None else \
                min(want, _pow2_at_least(size, least))
            assert got[knob] == expected, (kernel, knob, got, rule)
        assert (got.get("num_warps"), got.get("num_stages")) == (rule.warps, rule.stages), \
            (kernel, got, rule)
        if config_of(rule) == config:
            rows_ran |= got[row_knob] == config[0]
            keys_ran |= got[key_knob] == config[1]
    assert rows_ran and keys_ran, (config, launched)


# ------------------------------------------------------------------- forward

def _forward_sizes(cascade, name: str, config, dtype: str, head_dim: int) -> dict:
    rows, keys = config[0], config[1]
    sizes = dict(B=1, H=2 if name in PER_HEAD else 1, P=rows + 3, M=keys + rows + 3,
                 E=head_dim, F=head_dim)
    if name == "gqa":
        # Two query heads a group, packed in the row tile: 2 P rows, a tile and 6 rows.
        sizes.update(H=4, KH=2, P=rows // 2 + 3)
    if name in SPLITTING and dtype == "float32":
        sizes.update(M=8 * keys + rows + 3)
    return {rank: sizes[rank] for rank in drawn_ranks(cascade)}


@pytest.mark.slow
@pytest.mark.skipif(GPU, reason=ON_GPU)
@pytest.mark.parametrize("name, config, selector, contiguous, seed", FORWARD_CASES)
def test_every_example_computes_the_result_at_every_configuration(compiled, name, config,
                                                                   selector, contiguous, seed):
    cascade, module = compiled(name)
    capability, dtype, head_dim = selector
    sizes = _forward_sizes(cascade, name, config, dtype, head_dim)
    inputs = case_inputs(cascade, Case(sizes, dtype, 1.0, contiguous, seed))
    if name == "diff_transformer":
        # lambda = exp(LQ1 . LK1) - exp(LQ2 . LK2) + 0.8: unit normal dot products (at
        # E = 128 they would reach exp(30), and the outputs float16's range).
        for vector in ("LQ1", "LK1", "LQ2", "LK2"):
            inputs[vector].mul_(head_dim ** -0.25)
    assert representable(cascade, inputs, dtype)
    with on_the_gpu(module, capability) as (launched, splits, outside), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = getattr(module, module.__all__[0])(backend="triton")(*inputs.values())
    # The dots' operands are rounded to 16 bits as on the GPU: the check's bound for it.
    results = compare(cascade, inputs, out, dtype, rounding=dot_rounding(cascade, module))
    assert all(r.ok for r in results), [r.describe() for r in results]
    assert_ran_at_the_rules_tiles(module, launched, capability, dtype, config)
    if name in SPLITTING:
        # float32 outputs: the split path ran (atomic adds into zeros); 16 bits: one split.
        assert max(splits) >= 2 if dtype == "float32" else max(splits) == 1, splits
    assert_inside_the_tensors(outside)


# ------------------------------------------------------------------- backward

# The log-sum-exp statistic the training forward saves for the backward, from the
# forward's own GM and SD (both examples name them so).
LSE = """attention lse
dims B, H, P
input GM[b, h, p], SD[b, h, p]
LSE[b, h, p] = GM[b, h, p] + log(SD[b, h, p])
output LSE
"""


@pytest.mark.slow
@pytest.mark.skipif(GPU, reason=ON_GPU)
@pytest.mark.parametrize("name, selector, seed", BACKWARD_CASES)
def test_training_computes_the_gradients_at_every_backward_configuration(compiled, name,
                                                                        selector, seed):
    """loss.backward() through Cls(backend="triton") in 16 bits: the forward's output
    against the oracle, the statistic it saved against the oracle's, and the gradients
    against the backward the kernels compute, evaluated by the oracle on what the
    forward saved; each with the check's tolerance, as `einsumattn check` judges a
    16-bit case of a trained module (verify._backward_kernels)."""
    cascade, module = compiled(name, train=True)
    capability, dtype, head_dim = selector
    training = module.SCHEDULE["training"]
    assert training["reason"] is None
    rows = max(r.rows for r in BACKWARD_RULES)
    # P and M past one 64-row tile: the dQ kernel's rows and keys, the dK/dV kernel's
    # keys and rows. gqa: a group of two query heads (packed: 2 P rows).
    sizes = dict(B=1, H=1, P=rows + 3, M=rows + 8, E=head_dim, F=head_dim)
    if name == "gqa":
        sizes.update(H=2, KH=1)
    inputs = case_inputs(cascade, Case(sizes, dtype, 1.0, seed % 2 == 0, seed))
    assert representable(cascade, inputs, dtype)
    generator = torch.Generator().manual_seed(seed)
    outputs = einsumattn.evaluate(cascade, inputs)
    # Cotangents exact in the dtype: the backward's kernels receive them unrounded.
    cotangents = [torch.randn(tuple(outputs[o].shape), generator=generator).to(
        getattr(torch, dtype)).float() for o in cascade.outputs]
    saving, backward, ran = module._triton_saving, module._triton_backward, []

    def saved_by(*args):
        ran.append(saving(*args))
        return ran[-1]

    def counted(*args):
        ran.append("backward")
        return backward(*args)

    with configured(module, _triton_saving=saved_by, _triton_backward=counted), \
            on_the_gpu(module, capability) as (launched, _, outside):
        leaves = _backward(module, cascade, inputs, cotangents, "triton")
    (out, saved), done = ran
    assert done == "backward"          # the backward's kernels ran, not torch's autograd
    assert set(launched) == {k["name"] for k in training["kernels"]}
    for config in {config_of(rule_for(capability, dtype, head_dim, d)) for d in (3, 4)}:
        assert_ran_at_the_rules_tiles(module, launched, capability, dtype, config)

    # The forward's output, and the statistic it saved.
    results = compare(cascade, inputs, out, dtype, rounding=dot_rounding(cascade, module))
    assert all(r.ok for r in results), [r.describe() for r in results]
    assert [n for n, _ in training["saved"]] == ["LSE", *cascade.outputs]
    assert training["saved"][0][1].startswith("GM + log(SD)")
    values = dict(zip((n for n, _ in training["saved"]), saved))
    exact = einsumattn.evaluate(cascade, inputs, intermediates=True)
    results = compare(einsumattn.load(LSE), {"GM": exact["GM"], "SD": exact["SD"]},
                      values["LSE"], "float32")
    assert all(r.ok for r in results), [r.describe() for r in results]

    # The gradients, from what the forward saved.
    backward_cascade = einsumattn.load(training["backward"])
    feed = {**inputs, **values, **{training["cotangents"][o]: c.to(getattr(torch, dtype))
                                   for o, c in zip(cascade.outputs, cotangents)}}
    gradient_of = {g: x for x, g in training["gradients"].items()}
    got = tuple(leaves[gradient_of[o]].grad for o in backward_cascade.outputs)
    assert all(g is not None and g.dtype == getattr(torch, dtype) for g in got)
    rounded = training["rounded"]
    results = compare(backward_cascade, feed, got, dtype,
                      rounding=DotRounding(backward_cascade, rounded) if rounded else None)
    assert all(r.ok for r in results), [r.describe() for r in results]
    assert_inside_the_tensors(outside)
