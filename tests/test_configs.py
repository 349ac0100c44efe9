"""Configurations per call (einsumattn/schedule/configs.py, `_tuning` in the generated
module): the rules are well-formed and cover every device, dtype and head dim; pinned
knobs win; every configuration a rule can pick computes the oracle's result (run in
Triton's interpreter at small sizes, as on the GPU it was chosen for); the autotuning
mode keeps the fastest candidate per shape."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

import einsumattn
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.schedule.configs import CANDIDATES, RULES
from einsumattn.verify import Case, case_inputs, compare, dot_rounding

from conftest import GPU, ROOT

CAPABILITIES = (0, 70, 75, 80, 86, 89, 90, 100)
HEAD_DIMS = (16, 32, 64, 128, 256, 512)


def test_every_rule_gives_tiles_a_dot_takes():
    for rule in RULES:
        for tile in (rule.rows, rule.keys):
            assert tile is None or (tile >= 16 and tile & (tile - 1) == 0), rule
        assert rule.warps in (None, 1, 2, 4, 8) and rule.stages in (None, 1, 2, 3, 4), rule
        assert rule.why
    for rows, keys, warps, stages in CANDIDATES:
        assert rows >= 16 and keys >= 16 and not rows & (rows - 1) and not keys & (keys - 1)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_a_rule_matches_every_device_dtype_and_head_dim(module, dtype):
    targets = [("interpreter", 0)] + [("cuda", c) for c in CAPABILITIES]
    for target in targets:
        for head_dim in HEAD_DIMS:
            with configured(module, CONFIG_TARGET=target):
                config = module._tuning("causal_softmax__fused", 4096, 4096, head_dim, dtype,
                                        torch.device("cpu"), launch=None)
            assert config["p__BLOCK"] >= 16 and config["m0__BLOCK"] >= 16, (target, head_dim)


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    path = compile_to_file(ROOT / "examples" / "causal_softmax.attn",
                           tmp_path_factory.mktemp("configs"))
    return import_file(path, "configs_causal_softmax")


@contextlib.contextmanager
def configured(module, **values):
    """Module-level settings changed for a block, the pinned table and the cache restored."""
    saved = {name: getattr(module, name) for name in values}
    pinned = {k: dict(v) for k, v in module.TUNING_FUSED.items()}
    try:
        for name, value in values.items():
            setattr(module, name, value)
        module._CONFIGS.clear()
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
        for kernel, table in pinned.items():
            module.TUNING_FUSED[kernel] = table
        module._CONFIGS.clear()


def test_hopper_half_precision_takes_the_tutorials_tile_with_8_warps(module):
    with configured(module, CONFIG_TARGET=("cuda", 90)):
        at64 = module._tuning("causal_softmax__fused", 4096, 4096, 64, torch.bfloat16,
                              torch.device("cpu"), launch=None)
        at128 = module._tuning("causal_softmax__fused", 4096, 4096, 128, torch.float16,
                               torch.device("cpu"), launch=None)
    assert at64 == {"p__BLOCK": 128, "m0__BLOCK": 64, "num_warps": 4, "num_stages": 3}
    assert at128 == {"p__BLOCK": 128, "m0__BLOCK": 128, "num_warps": 8, "num_stages": 3}


def test_pinned_knobs_win_and_short_sequences_cap_the_rest(module):
    with configured(module, CONFIG_TARGET=("cuda", 90)):
        module.TUNING_FUSED["causal_softmax__fused"].update(p__BLOCK=32, num_warps=2)
        config = module._tuning("causal_softmax__fused", 4096, 20, 64, "bfloat16",
                                torch.device("cpu"), launch=None)
    assert config == {"p__BLOCK": 32, "num_warps": 2, "m0__BLOCK": 32, "num_stages": 3}


def test_the_interpreter_keeps_the_schedules_defaults(module):
    with configured(module, CONFIG_TARGET=None):
        config = module._tuning("causal_softmax__fused", 4096, 4096, 64, "float32",
                                torch.device("cpu"), launch=None)
    assert config == {"p__BLOCK": 16, "m0__BLOCK": 64}


def agrees(module, sizes, dtype):
    cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    inputs = case_inputs(cascade, Case(sizes, dtype, 1.0, False, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = module.CausalSoftmax(backend="triton")(*inputs.values())
    # The dots' operands are rounded to 16 bits as on the GPU: the check's bound for it.
    results = compare(cascade, inputs, out, dtype, rounding=dot_rounding(cascade, module))
    return all(r.ok for r in results)


# Each distinct configuration a GPU rule picks, with a target, dtype and head dim that
# select it; sizes past one tile in both ranks, with a partial last tile.
PICKED = sorted({(r.rows, r.keys, r.warps, r.stages):
                 (r.capability or 70, r.dtypes[0], min(r.head_dim, 160))
                 for r in RULES if r.device == "cuda" and not r.dots}.items())


@pytest.mark.slow
@pytest.mark.skipif(GPU, reason="the GPU picks its own rule: the suite runs them there")
@pytest.mark.parametrize("config, selector", PICKED, ids=[str(c) for c, _ in PICKED])
def test_every_configuration_a_rule_picks_computes_the_result(module, config, selector):
    capability, dtype, head_dim = selector
    rows, keys = config[0], config[1]
    sizes = dict(B=1, H=1, P=rows + 3, M=keys + rows + 3, E=head_dim, F=head_dim)
    launched = {}
    launch = module._tuning

    def record(*args, **kwargs):
        launched.update(launch(*args, **kwargs))
        return launched

    with configured(module, CONFIG_TARGET=("cuda", capability), _tuning=record):
        assert agrees(module, sizes, dtype)
    assert (launched["p__BLOCK"], launched["m0__BLOCK"]) == (rows, keys)


@pytest.mark.skipif(GPU, reason="timed in the interpreter here; on a GPU by do_bench")
def test_autotuning_keeps_the_fastest_candidate_per_shape(module):
    candidates = [{"rows": 16, "keys": 16, "warps": 4, "stages": 2},
                  {"rows": 32, "keys": 32, "warps": 4, "stages": 2}]
    with configured(module, AUTOTUNE=True, CONFIG_CANDIDATES=candidates):
        assert agrees(module, dict(B=1, H=1, P=20, M=40, E=8, F=8), "float32")
        (chosen,) = module._CONFIGS.values()
        assert (chosen["p__BLOCK"], chosen["m0__BLOCK"]) in ((16, 16), (32, 32))
        # A second call of the same shape class takes the cached choice.
        assert agrees(module, dict(B=1, H=1, P=20, M=40, E=8, F=8), "float32")
        assert len(module._CONFIGS) == 1
