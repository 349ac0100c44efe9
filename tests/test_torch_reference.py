"""The torch reference backend where the oracle is easy to get wrong: inf and NaN stored
at masked keys (padding), gradients through fully masked rows, recurrences that compute
with their step, and the Triton backends refusing inputs that require grad."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import einsumattn
from einsumattn.codegen.compile import compile_to_file, import_file
from einsumattn.verify import compare

from conftest import ROOT

_modules = itertools.count()


def build(text: str, folder):
    """The generated module of a spec (text), imported."""
    cascade = einsumattn.load(text)
    path = compile_to_file(cascade, folder)
    return cascade, import_file(path, f"torch_reference_{cascade.name}_{next(_modules)}")


def softmax(name: str, mask: str, inputs: str = "", params: str = "") -> str:
    """The causal softmax example under another name, with another mask, and with more
    inputs and params."""
    text = (ROOT / "examples" / "causal_softmax.attn").read_text()
    for old, new in (("attention causal_softmax", f"attention {name}"),
                     ("where m <= p", f"where {mask}"),
                     ("V[b, h, m, f]\n", f"V[b, h, m, f]{inputs}\n"),
                     ("param scale = 1 / sqrt(E)", f"param scale = 1 / sqrt(E){params}")):
        assert old in text
        text = text.replace(old, new, 1)
    return text


# Masks under which keys 5.. are seen by no query (P = 4, M = 8): padding past a valid
# length L, causal attention with more keys than queries (a KV cache past the queries),
# and a document that no query belongs to.
MASKS = {
    "padding": dict(mask="m < L", params="\nparam L", inputs="", kwargs={"L": 5}),
    "causal": dict(mask="m <= p", params="", inputs="", kwargs={}),
    "document": dict(mask="DQ[p] == DK[m]", params="", inputs=", DQ[p], DK[m]", kwargs={}),
}
UNSEEN = slice(5, None)


def _softmax(tmp_path, kind: str):
    spec = MASKS[kind]
    return build(softmax(f"masked_{kind}", spec["mask"], spec["inputs"], spec["params"]),
                 tmp_path)


def _inputs(kind: str, poison: float, where: str, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 1, 4 if i == 0 else 8, 3, generator=generator)
               for i in range(3))
    if "K" in where:
        k[:, :, UNSEEN] = poison
    if "V" in where:
        v[:, :, UNSEEN] = poison
    inputs = {"Q": q, "K": k, "V": v}
    if kind == "document":
        inputs["DQ"] = torch.tensor([0, 1, 1, 0])
        inputs["DK"] = torch.tensor([0, 1, 0, 1, 0, 2, 2, 2])   # document 2: no query
    return inputs


@pytest.mark.parametrize("kind", sorted(MASKS))
@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["K", "V", "KV"])
def test_inf_and_nan_at_keys_no_query_sees_do_not_leak(tmp_path, kind, poison, where):
    """Padding is exact: the oracle skips masked terms, so a NaN or inf stored there
    never enters a result. torch.einsum over a masked factor computed 0 * NaN = NaN in
    every output row."""
    cascade, module = _softmax(tmp_path, kind)
    inputs = _inputs(kind, poison, where)
    params = MASKS[kind]["kwargs"]
    out = module.reference(*inputs.values(), **params)
    assert torch.isfinite(out).all(), out
    results = compare(cascade, inputs, out, "float32", params)
    assert all(r.ok for r in results), [r.describe() for r in results]


def test_a_nan_key_seen_by_some_rows_reaches_exactly_those_rows(tmp_path):
    """Causal: a NaN in V at key 2 is seen by queries 2 and 3 only; the oracle gives NaN
    there and finite values in rows 0 and 1, and so must the reference."""
    cascade, module = _softmax(tmp_path, "causal")
    inputs = _inputs("causal", 0.0, "")
    inputs["V"][:, :, 2] = math.nan
    out = module.reference(*inputs.values())
    expected = einsumattn.evaluate(cascade, inputs)["AV"]
    assert np.array_equal(np.isnan(out.numpy()), np.isnan(expected))
    assert np.isnan(expected[:, :, 2:]).all() and np.isfinite(expected[:, :, :2]).all()


# ------------------------------------------------------------------ gradients

def _independent_attention(q, k, v, mask):
    """Masked softmax attention written directly: a fully masked row gives 0 (its scores
    are replaced by zeros, so its softmax is finite, and the row is zeroed after)."""
    scores = torch.einsum("bhpe,bhme->bhpm", q, k) / math.sqrt(q.shape[-1])
    seen = mask.any(dim=-1, keepdim=True)
    scores = torch.where(mask, scores, -math.inf)
    scores = torch.where(seen, scores, 0.0)
    return torch.einsum("bhpm,bhmf->bhpf", torch.softmax(scores, dim=-1), v) * seen


@pytest.mark.parametrize("mask_text, mask", [
    ("m <= p - 2", lambda p, m: m <= p - 2),         # rows 0 and 1 see no key
    ("m < L and p < L", lambda p, m: (m < 3) & (p < 3)),   # padded queries and keys
    ("m > p + 5", lambda p, m: m > p + 5),           # rows 2.. see no key
])
def test_fully_masked_rows_have_zero_gradients(tmp_path, mask_text, mask):
    """Forward 0 for a row that sees no key, and gradients 0 (they were NaN: the
    backward of exp(QK - GM) at GM = -inf and of SN / SD at SD = 0 multiplied a zero
    gradient by inf). Elsewhere the gradients are those of attention written directly."""
    params = "\nparam L" if "L" in mask_text else ""
    _, module = build(softmax("grad_rows", mask_text, params=params), tmp_path)
    kwargs = {"L": 3} if params else {}
    generator = torch.Generator().manual_seed(1)
    leaves = [torch.randn(2, 2, 6 if i == 0 else 8, 4, generator=generator,
                          requires_grad=True) for i in range(3)]
    p, m = torch.arange(6)[:, None], torch.arange(8)[None, :]
    keep = mask(p, m)
    weights = torch.randn(2, 2, 6, 4, generator=generator)

    out = module.reference(*leaves, **kwargs)
    grads = torch.autograd.grad((out * weights).sum(), leaves)
    expected_out = _independent_attention(*leaves, keep)
    expected = torch.autograd.grad((expected_out * weights).sum(), leaves)

    torch.testing.assert_close(out, expected_out)
    blind = ~keep.any(dim=1)
    assert blind.any() and (out[:, :, blind] == 0).all()
    for got, want in zip(grads, expected):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want)
    assert (grads[0][:, :, blind] == 0).all()


def test_forward_values_are_unchanged_by_the_gradient_guards(tmp_path):
    """The guards only choose where gradients flow: with and without autograd the
    outputs are bitwise the same."""
    _, module = build(softmax("guards", "m <= p - 2"), tmp_path)
    generator = torch.Generator().manual_seed(2)
    leaves = [torch.randn(1, 2, 5, 4, generator=generator) for _ in range(3)]
    with torch.no_grad():
        plain = module.reference(*leaves)
    tracked = module.reference(*(t.clone().requires_grad_() for t in leaves))
    assert torch.equal(plain, tracked.detach())


# ------------------------------------------------------------------ Triton and autograd

def test_triton_backends_keep_outputs_in_the_graph(tmp_path):
    """Outputs are never silently detached from autograd (a model that trains with no
    gradient reaching Q, K, V): the Triton backends' outputs carry a backward
    (_TritonTrained), equal to the torch backend's; detached or under no_grad they do
    not. (tests/test_triton_training.py checks the values against the oracle.)"""
    pytest.importorskip("triton")
    _, module = build((ROOT / "examples" / "causal_softmax.attn").read_text(), tmp_path)
    leaves = [torch.randn(1, 1, 4, 4, requires_grad=True) for _ in range(3)]
    module.CausalSoftmax(backend="torch")(*leaves).sum().backward()
    want = [t.grad.clone() for t in leaves]
    for backend in ("triton", "triton-unfused"):
        layer = module.CausalSoftmax(backend=backend)
        for t in leaves:
            t.grad = None
        out = layer(*leaves)
        assert out.requires_grad
        out.sum().backward()
        assert all(torch.equal(t.grad, w) for t, w in zip(leaves, want)), backend
        with torch.no_grad():
            assert not layer(*leaves).requires_grad
        assert not layer(*(t.detach() for t in leaves)).requires_grad


# ------------------------------------------------------------------ recurrences

def test_a_recurrence_computes_with_its_step(tmp_path):
    """Inside a recurrence's loop the step `t` is a Python int: exp(-t), sign(t - 2),
    max(t, 1) and where(t > 1, ...) are printed for it (torch.exp(t) raised TypeError)."""
    text = """attention stepped
dims T, D, E
input X[t, d], W[d, e]
init S[0, e] = 0
S[t+1, e] = (S[t, e] * 0.5 + X[t, d] * W[d, e] * exp(-t) * 2 ** (-t)
             + sign(t - 2) * max(t, 1) + where(t > 1, X[t, 0], 0))
O[e] = S[T, e]
output O
"""
    cascade, module = build(text, tmp_path)
    generator = torch.Generator().manual_seed(3)
    inputs = {"X": torch.randn(5, 3, generator=generator),
              "W": torch.randn(3, 2, generator=generator)}
    results = compare(cascade, inputs, module.reference(*inputs.values()), "float32")
    assert all(r.ok for r in results), [r.describe() for r in results]


def test_a_mask_read_from_a_tensor_of_other_ranks_is_expanded(tmp_path):
    """The thorough profile's random cascade: T3[f, m] has the points of the scalar T2,
    and the reference reused T2's 0-dimensional mask as T3's, then indexed it by f, m
    (IndexError)."""
    spec = tmp_path / "gen_5e_fpm.attn"
    spec.write_text("attention gen_5e_fpm\n\ndims  F, P, M\ninput X0[f, p, m]\n"
                    "param scale = 1 / sqrt(P)\n\n"
                    "T1[m] = sum[f, p] tanh(X0[f, p, m]) where m < 1\n"
                    "init R2[0] = -inf\nR2[m+1] = max(R2[m], T1[m])\nT2 = R2[M]\n"
                    "T3[f, m] = sum[p] T2 / (1 + abs(X0[f, p, m])) - scale\n"
                    "T4[m] = max[f] -T3[f, m] * 0.5\n\noutput T4\n")
    module = einsumattn.compile(spec, backend="torch")
    x = torch.randn(3, 2, 4)
    expected = einsumattn.evaluate(einsumattn.load(spec), {"X0": x.double().numpy()})["T4"]
    with torch.no_grad():
        for backend in ("reference", "torch"):
            got = getattr(module, module.__all__[0])(backend=backend)(x)
            assert np.array_equal(got.double().numpy(), expected), backend


def test_gradients_flow_through_a_recurrence_read_by_integers(tmp_path):
    """A running max over a 1-d sequence: its step read R2[m] as a view (an integer
    index), which the step's own in-place write of R2[m + 1] changed before the backward
    used it (max keeps its operands): RuntimeError in autograd. Checked against autograd
    of the same function written directly."""
    text = ("attention running\ndims M, F\ninput X[m], Y[f, m]\ninit R2[0] = -inf\n"
            "R2[m+1] = max(R2[m], X[m])\nT2 = R2[M]\nT3[f, m] = Y[f, m] / T2\n"
            "T4[m] = max[f] T3[f, m]\noutput T4\n")
    _, module = build(text, tmp_path)
    generator = torch.Generator().manual_seed(5)
    x = (torch.rand(6, generator=generator) + 0.5).requires_grad_()
    y = torch.randn(4, 6, generator=generator).requires_grad_()
    module.reference(x, y).sum().backward()
    got = x.grad.clone(), y.grad.clone()
    x.grad, y.grad = None, None
    (y / x.max()).amax(0).sum().backward()
    assert torch.allclose(got[0], x.grad) and torch.allclose(got[1], y.grad)
