"""A compiled spec as an attention implementation of Hugging Face transformers.

    import einsumattn.huggingface as hf
    hf.register("einsum_llama", "examples/huggingface/llama_gqa.attn", backend="triton")
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation="einsum_llama")

`register` adds the spec to transformers' `AttentionInterface` (and a mask function to
its `AttentionMaskInterface`) under a name of your choice. The model then calls the
compiled module in every attention layer where it would call SDPA. transformers is an
optional extra (`pip install einsumattn[huggingface]`): neither the core nor the
generated modules import it. docs/huggingface.md says what a spec must declare.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["register", "attention_function"]


def _transformers():
    try:
        import transformers  # noqa: F401
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as error:            # pragma: no cover - depends on the install
        raise ImportError("einsumattn.huggingface needs transformers (pip install "
                          "'einsumattn[huggingface]')") from error
    return AttentionInterface, AttentionMaskInterface, sdpa_mask


def _compiled(spec, train: bool) -> ModuleType:
    if isinstance(spec, ModuleType):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        from .codegen import compile as compile_spec
        return compile_spec(spec, train=train)
    raise TypeError(f"spec must be a path to a .attn file, its text or a generated module, "
                    f"got {type(spec).__name__}")


def _repeats_kv(module: ModuleType, query: str, key: str, value: str,
                mask: str | None) -> bool:
    """Whether the kv heads must be repeated for the spec (its key has the query's head
    rank), after checking the spec's inputs for transformers' tensors: the
    query (B, H, P, E), the key and value with the query's batch rank first and a
    sequence rank third, the mask (B, P, M) over the query's and key's sequence ranks."""
    ranks = module.INPUT_RANKS
    named = {"query": query, "key": key, "value": value, "mask": mask}
    for role, name in named.items():
        if name is not None and name not in ranks:
            raise ValueError(f"{module.__name__}: the {role} input {name!r} is not an input "
                             f"of the spec (its inputs: {', '.join(ranks)})")
    for role in ("query", "key", "value"):
        if len(ranks[named[role]]) != 4:
            raise ValueError(f"{module.__name__}: the {role} input {named[role]} must have "
                             f"4 ranks (batch, heads, sequence, head dim), has "
                             f"{len(ranks[named[role]])}")
    b, h, p, e = ranks[query]
    if mask is not None and ranks[mask] != (b, p, ranks[key][2]):
        raise ValueError(f"{module.__name__}: the mask input {mask} must have ranks "
                         f"[{b}, {p}, {ranks[key][2]}] (batch, query, key), has "
                         f"[{', '.join(ranks[mask])}]")
    others = [n for n in ranks if n not in named.values()]
    if others:
        raise ValueError(f"{module.__name__}: transformers passes only query, key, value "
                         f"and the mask; the spec's inputs {', '.join(others)} have no "
                         f"source (declare them as params, or give them a role)")
    if len(module.OUTPUTS) != 1:
        raise ValueError(f"{module.__name__}: an attention implementation returns one "
                         f"tensor; the spec has outputs {', '.join(module.OUTPUTS)}")
    # The key's heads: the query's rank (H) when the spec repeats no kv heads itself.
    return ranks[key][1] == h


def attention_function(spec, *, backend: str = "torch", query: str = "Q", key: str = "K",
                       value: str = "V", mask: str | None = "MASK", scale: str | None = "scale",
                       train: bool = False, **params):
    """The attention function transformers calls (`AttentionInterface`'s protocol):
    (module, query, key, value, attention_mask, scaling=..., dropout=..., ...) ->
    (output [batch, sequence, heads, head dim], None).

    `spec`: a .attn path or text (compiled with `train`), or a generated module.
    `query`, `key`, `value`, `mask`: the spec's inputs transformers' tensors go to (the
    mask: 1 where a query sees a key, 0 elsewhere; None if the spec takes none: it then
    masks causally itself, and a padded batch is refused). `scale`: the param that
    receives the model's `scaling` (None: the spec's own default). `params`: the other
    params' values. A spec whose key has the query's heads (no `h * KH // H`) gets the
    kv heads repeated for grouped-query models.
    """
    import torch

    module = _compiled(spec, train)
    mask_name = mask if mask is not None and mask in module.INPUT_RANKS else None
    if mask is not None and mask != "MASK" and mask_name is None:
        raise ValueError(f"{module.__name__}: the mask input {mask!r} is not an input of "
                         f"the spec (its inputs: {', '.join(module.INPUTS)})")
    repeat_kv = _repeats_kv(module, query, key, value, mask_name)
    if scale is not None and scale not in module.PARAMS:
        scale = None
    unknown = set(params) - set(module.PARAMS)
    if unknown:
        raise TypeError(f"{module.__name__}: unknown param(s) {', '.join(sorted(unknown))}; "
                        f"the params are {', '.join(module.PARAMS) or 'none'}")
    order = {query: 0, key: 1, value: 2, mask_name: 3}
    forward = getattr(module, module.__all__[1])      # the module's function
    name = module.__name__

    def attention(layer, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if dropout and layer.training:
            raise NotImplementedError(f"{name}: attention dropout is not supported; "
                                      f"set the config's attention_dropout to 0")
        if repeat_kv and k.shape[1] != q.shape[1]:
            groups = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        tensors = [q, k, v]
        if mask_name is not None:
            tensors.append(_visible(attention_mask, q, k))
        elif attention_mask is not None or q.shape[2] != k.shape[2]:
            # (with a cache, query p is not key p: a spec's own `m <= p` would be wrong)
            raise ValueError(f"{name}: the model passed an attention mask (padding) or "
                             f"keys from a cache, and the spec takes no mask; declare an "
                             f"input MASK[b, p, m] and filter the scores with "
                             f"`where MASK[b, p, m] != 0` (docs/huggingface.md)")
        given = dict(params)
        if scale is not None and scaling is not None:
            given[scale] = scaling
        ordered = [t for _, t in sorted(zip(order.values(), tensors))]
        out = forward(*ordered, backend=backend, **given)
        return out.transpose(1, 2).contiguous(), None

    def _visible(attention_mask, q, k):
        """transformers' mask as the spec's MASK[b, p, m]: 1 where query p sees key m
        (its 4-D boolean mask has one head; None: every key)."""
        if attention_mask is None:
            return torch.ones(q.shape[0], q.shape[2], k.shape[2], dtype=torch.int32,
                              device=q.device)
        if attention_mask.dtype != torch.bool:      # an additive mask: -inf / min where hidden
            attention_mask = attention_mask == 0
        return attention_mask[:, 0].expand(q.shape[0], q.shape[2], k.shape[2]).to(torch.int32)

    attention.einsumattn_module = module
    attention.takes_mask = mask_name is not None
    return attention


def register(name: str, spec, **options):
    """Register `spec` (see attention_function for the options) as transformers'
    attention implementation `name`: `attn_implementation=name` then runs it. With a
    mask input the model builds its full boolean mask (causal, padding, cache) for it;
    without one, the mask transformers would skip for unpadded causal batches."""
    attention_interface, mask_interface, sdpa_mask = _transformers()
    function = attention_function(spec, **options)

    def full_mask(*args, **kwargs):
        # SDPA's mask, never skipped: transformers would pass None where SDPA's
        # is_causal can stand for it (it sets these flags per call)
        kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
        return sdpa_mask(*args, **kwargs)

    attention_interface.register(name, function)
    mask_interface.register(name, full_mask if function.takes_mask else sdpa_mask)
    return function
