"""Hugging Face transformers runs a compiled spec (issue 17, item 3; einsumattn/huggingface.py):
a tiny Llama built from a config (random weights, no download) with the spec registered
as its attention implementation gives SDPA's logits, with padding and with a cache."""

from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

import einsumattn.huggingface as hf  # noqa: E402

from conftest import GPU, ROOT  # noqa: E402

SPECS = ROOT / "examples" / "huggingface"
DEVICE = "cuda" if GPU else "cpu"
TRITON = GPU or os.environ.get("TRITON_INTERPRET") == "1"
# float32 throughout: the logits of the two implementations differ by the summation
# order of the attention sums and of the layers after them: a few ulps of logits of
# magnitude about 1, through 2 layers (1.6e-7 measured); 1e-5 leaves room.
ATOL = 1e-5


def _model():
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(DEVICE).eval()


def _batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, 11), generator=generator)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, :4] = 0                                   # left padding
    mask[2, 8:] = 0                                   # right padding
    return ids.to(DEVICE), mask.to(DEVICE)


def _logits(model, implementation, ids, mask):
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("backend", ["torch", "reference"] + ["triton"] * TRITON)
def test_a_tiny_llama_gives_sdpas_logits_with_padding(backend):
    hf.register(f"einsum_gqa_{backend}", SPECS / "llama_gqa.attn", backend=backend)
    model = _model()
    ids, mask = _batch()
    want = _logits(model, "sdpa", ids, mask)
    got = _logits(model, f"einsum_gqa_{backend}", ids, mask)
    seen = mask.bool()                    # padded positions' logits are not compared
    torch.testing.assert_close(got[seen], want[seen], rtol=0, atol=ATOL)


def test_generation_with_a_cache_gives_sdpas_logits():
    """Decoding: one query against the cached keys, masked by the model's mask (the
    spec's MASK input carries the cache's positions)."""
    hf.register("einsum_gqa_cache", SPECS / "llama_gqa.attn", backend="torch")
    model = _model()
    ids, mask = _batch()
    steps = {}
    for implementation in ("sdpa", "einsum_gqa_cache"):
        model.set_attn_implementation(implementation)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                             output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
        steps[implementation] = torch.stack(out.logits)
    torch.testing.assert_close(steps["einsum_gqa_cache"], steps["sdpa"], rtol=0, atol=ATOL)


def _softcapped(cap):
    """Soft-capped attention written out in torch, in transformers' protocol: the
    independent reference for the spec."""
    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        groups = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        scores = cap * torch.tanh(query @ key.transpose(-1, -2) * scaling / cap)
        scores = scores.masked_fill(~attention_mask, -torch.inf)
        # a padded query sees no key: weights 0, not NaN (which the next layer's
        # masked-out keys would carry into every row as 0 * NaN)
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        return (weights @ value).transpose(1, 2).contiguous(), None
    return attention


def test_a_custom_variant_runs_end_to_end():
    """Soft-capped scores (Gemma 2's cap * tanh(s / cap)) in a Llama: the logits of the
    same math written out in torch, and with a cap small enough to bite, not SDPA's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    function = hf.register("einsum_softcap", SPECS / "llama_softcap.attn", backend="torch",
                           cap=0.1)
    AttentionInterface.register("torch_softcap", _softcapped(0.1))
    # the same full boolean mask the spec is given
    AttentionMaskInterface.register("torch_softcap",
                                    AttentionMaskInterface()["einsum_softcap"])
    assert function.takes_mask
    model = _model()
    ids, mask = _batch()
    got = _logits(model, "einsum_softcap", ids, mask)
    seen = mask.bool()
    torch.testing.assert_close(got[seen], _logits(model, "torch_softcap", ids, mask)[seen],
                               rtol=0, atol=ATOL)
    assert (got[seen] - _logits(model, "sdpa", ids, mask)[seen]).abs().max() > 10 * ATOL


def test_a_spec_without_a_mask_repeats_kv_heads_and_refuses_padding():
    """A plain causal spec (no MASK input, K with the query's heads): the kv heads are
    repeated for the grouped-query model; an unpadded batch matches SDPA, a padded one
    is refused with what to declare."""
    hf.register("einsum_causal", ROOT / "examples" / "causal_softmax.attn", backend="torch")
    model = _model()
    ids, mask = _batch()
    full = torch.ones_like(mask)
    torch.testing.assert_close(_logits(model, "einsum_causal", ids, full),
                               _logits(model, "sdpa", ids, full), rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match=r"declare an input MASK\[b, p, m\]"):
        _logits(model, "einsum_causal", ids, mask)


def test_a_spec_transformers_cannot_feed_is_refused_when_registered():
    with pytest.raises(ValueError, match="have no source"):
        hf.attention_function(ROOT / "examples" / "cosine_attention.attn", mask=None)
    with pytest.raises(TypeError, match="unknown param"):
        hf.attention_function(SPECS / "llama_gqa.attn", window=3)
    with pytest.raises(ValueError, match="must have ranks"):
        hf.attention_function(ROOT / "examples" / "gqa.attn", mask="Q")


def test_the_core_and_generated_modules_do_not_import_transformers(tmp_path):
    """transformers stays an optional extra: importing einsumattn and a generated module
    (in a fresh interpreter) loads none of it."""
    import subprocess
    import sys

    from einsumattn.codegen import compile_to_file

    path = compile_to_file(SPECS / "llama_gqa.attn", tmp_path)
    code = ("import importlib.util, sys, einsumattn, einsumattn.cli\n"
            f"spec = importlib.util.spec_from_file_location('m', {str(path)!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "assert 'transformers' not in sys.modules, 'transformers was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
