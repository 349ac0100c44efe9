"""Hand-written PyTorch references for the example specs in `examples/`.

Each function implements one attention variant directly from its paper's math,
independently of the `.attn` specs (no cascades, no running maxima, no spec
semantics), so that a test comparing the two checks the spec *and* the oracle.
All functions expect float64 tensors and return float64 tensors.

Conventions: queries Q[B, H, P, E], keys K[B, H, M, E], values V[B, H, M, F];
`scale` defaults to 1 / sqrt(E).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _default_scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def _masked_softmax_av(scores: torch.Tensor, v: torch.Tensor,
                       keep: torch.Tensor | None) -> torch.Tensor:
    """softmax(scores) @ v over the last axis, keys where `keep` is False removed.

    A query row with no kept key gets an all-zero output (the einsumattn convention:
    a sum over no points is 0), where `torch.softmax` alone would give NaN.
    """
    if keep is None:
        return torch.softmax(scores, dim=-1) @ v
    weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    weights = torch.where(keep.any(dim=-1, keepdim=True), weights, torch.zeros_like(weights))
    return weights @ v


def softmax_attention(q, k, v, scale=None, keep=None):
    """Scaled dot-product attention, Vaswani et al. 2017, "Attention Is All You Need":
    softmax(Q K^T * scale) V, optionally restricted to keys where the boolean `keep[P, M]`
    holds. FuseMax (Nayak et al., MICRO 2024) Cascades 4 and 5 compute the same function.
    """
    scores = torch.einsum("bhpe,bhme->bhpm", q, k) * _default_scale(q, scale)
    return _masked_softmax_av(scores, v, keep)


def causal_mask(p: int, m: int, strict: bool = False) -> torch.Tensor:
    """keep[p, m] = m <= p (or m < p with `strict`): top-left aligned causal mask."""
    return torch.tril(torch.ones(p, m, dtype=torch.bool), diagonal=-1 if strict else 0)


def causal_softmax_attention(q, k, v, scale=None):
    """Causal (decoder) softmax attention, Vaswani et al. 2017: query p attends to keys
    m <= p."""
    return softmax_attention(q, k, v, scale, causal_mask(q.shape[-2], k.shape[-2]))


def sliding_window_sinks_mask(p: int, m: int, window: int, sinks: int) -> torch.Tensor:
    """StreamingLLM's key set: the `window` most recent causal keys plus the first `sinks`."""
    qi = torch.arange(p).unsqueeze(1)
    ki = torch.arange(m).unsqueeze(0)
    return (ki <= qi) & ((qi - ki < window) | (ki < sinks))


def sliding_window_sinks_attention(q, k, v, window=4, sinks=1, scale=None):
    """StreamingLLM, Xiao et al. 2024, "Efficient Streaming Language Models with Attention
    Sinks": causal attention over a rolling window of recent tokens plus the initial
    "attention sink" tokens, whose keys are always kept."""
    keep = sliding_window_sinks_mask(q.shape[-2], k.shape[-2], window, sinks)
    return softmax_attention(q, k, v, scale, keep)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes, Press et al. 2022, "Train Short, Test Long", section 3: a
    geometric sequence that starts at 2^(-8/n) and uses that number as its ratio
    (1/2, 1/4, ..., 1/256 for n = 8)."""
    start = 2.0 ** (-8.0 / n_heads)
    return torch.tensor([start * start ** i for i in range(n_heads)], dtype=torch.float64)


def alibi_attention(q, k, v, scale=None):
    """ALiBi, Press et al. 2022: causal softmax(q_i K^T * scale + slope * [-(i-1), ..., -1, 0])
    V; the penalty is slope_h * (j - i) for key j <= query i."""
    n_heads, p, m = q.shape[1], q.shape[-2], k.shape[-2]
    distance = (torch.arange(m).unsqueeze(0) - torch.arange(p).unsqueeze(1)).to(torch.float64)
    bias = alibi_slopes(n_heads).view(n_heads, 1, 1) * distance          # [H, P, M]
    scores = torch.einsum("bhpe,bhme->bhpm", q, k) * _default_scale(q, scale) + bias
    return _masked_softmax_av(scores, v, causal_mask(p, m))


def softcap_attention(q, k, v, cap=50.0, scale=None):
    """Logit soft-capping, Gemma Team 2024, "Gemma 2": logits <- cap * tanh(logits / cap)
    before the softmax."""
    scores = torch.einsum("bhpe,bhme->bhpm", q, k) * _default_scale(q, scale)
    return _masked_softmax_av(cap * torch.tanh(scores / cap), v, None)


def gqa_attention(q, k, v, scale=None):
    """Grouped-query attention, Ainslie et al. 2023, "GQA": H query heads in KH groups of
    H / KH consecutive heads; each group shares one key/value head (KH = 1 is multi-query
    attention, KH = H is multi-head attention)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    return softmax_attention(q, k, v, scale)


def sigmoid_attention(q, k, v, bias=None, scale=None):
    """Sigmoid self-attention, Ramapuram et al. 2024, "Theory, Analysis, and Best
    Practices for Sigmoid Self-Attention": sigma(Q K^T * scale + b) V with b = -log(n),
    n the sequence (key) length; no normalisation over keys."""
    if bias is None:
        bias = -math.log(k.shape[-2])
    scores = torch.einsum("bhpe,bhme->bhpm", q, k) * _default_scale(q, scale)
    return torch.sigmoid(scores + bias) @ v


def linear_attention(q, k, v):
    """Linear attention, Katharopoulos et al. 2020, "Transformers are RNNs", eq. 6 with
    phi(x) = elu(x) + 1: V'_i = phi(Q_i)^T (sum_j phi(K_j) V_j^T) / phi(Q_i)^T sum_j phi(K_j)."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    kv = torch.einsum("bhme,bhmf->bhef", fk, v)
    num = torch.einsum("bhpe,bhef->bhpf", fq, kv)
    den = torch.einsum("bhpe,bhe->bhp", fq, fk.sum(dim=-2))
    return num / den.unsqueeze(-1)


def gla_recurrent(q, k, v, gk, scale=None):
    """Gated linear attention, Yang et al. 2024, "Gated Linear Attention Transformers with
    Hardware-Efficient Training", recurrent form: S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,
    o_t = (scale q_t)^T S_t with alpha_t = exp(gk_t) (log-space gates, as
    flash-linear-attention's fused_recurrent_gla). Shapes Q, K, GK [B, H, T, D], V [B, H, T, F].
    """
    b, h, t_len, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    state = q.new_zeros(b, h, d, v.shape[-1])
    out = []
    for t in range(t_len):
        state = torch.exp(gk[:, :, t]).unsqueeze(-1) * state \
            + k[:, :, t].unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
        out.append(torch.einsum("bhd,bhdf->bhf", q[:, :, t] * scale, state))
    return torch.stack(out, dim=2)


def gla(q, k, v, gx, scale=None):
    """GLA with the paper's gates (Yang et al. 2024, section 4.1): alpha_t =
    sigmoid(gx_t)^(1/16), log alpha_t = logsigmoid(gx_t) / 16 (flash-linear-attention's
    gate_logit_normalizer 16), then the recurrent form above."""
    return gla_recurrent(q, k, v, F.logsigmoid(gx) / 16, scale)


def eca(x, conv_weight):
    """Efficient channel attention, Wang et al. 2020, "ECA-Net": global average pooling,
    a 1-D convolution of odd size k across channels with zero padding (k - 1) // 2 and no
    bias, a sigmoid, and a per-channel rescaling of the input X[B, C, H, W]."""
    ksize = conv_weight.shape[0]
    pooled = x.mean(dim=(2, 3))                                           # [B, C]
    y = F.conv1d(pooled.unsqueeze(1), conv_weight.view(1, 1, ksize), padding=(ksize - 1) // 2)
    return x * torch.sigmoid(y.squeeze(1)).view(x.shape[0], x.shape[1], 1, 1)


def diff_transformer(q1, k1, q2, k2, v, lq1, lk1, lq2, lk2, lambda_init=0.8, scale=None):
    """Differential attention, Ye et al. 2025, "Differential Transformer", eq. 1-2:
    (softmax(Q1 K1^T s) - lambda softmax(Q2 K2^T s)) V with the re-parameterised
    lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, one per head here (the paper
    shares it across a layer's heads; the GroupNorm after it is not part of DiffAttn)."""
    s = _default_scale(q1, scale)
    lam = torch.exp((lq1 * lk1).sum(-1)) - torch.exp((lq2 * lk2).sum(-1)) + lambda_init
    a1 = torch.softmax(q1 @ k1.transpose(-1, -2) * s, dim=-1)
    a2 = torch.softmax(q2 @ k2.transpose(-1, -2) * s, dim=-1)
    return (a1 - lam.view(1, -1, 1, 1) * a2) @ v


def relu_attention(q, k, v, scale=None):
    """ReLU attention, Wortsman et al. 2023, "Replacing softmax with ReLU in Vision
    Transformers": relu(Q K^T * scale) / L V, L the sequence length (the keys)."""
    scores = torch.relu(torch.einsum("bhpe,bhme->bhpm", q, k) * _default_scale(q, scale))
    return scores / k.shape[-2] @ v


def clipped_softmax(q, k, v, x, wg, zeta=1.0, gamma=-0.03, scale=None):
    """Bondarenko et al. 2023, "Quantizable Transformers": the clipped softmax
    clip((zeta - gamma) * softmax(s) + gamma, 0, 1) applied to V, then gated attention:
    each head's output times sigmoid(G(x)), G a linear map of the token's input per head."""
    weights = torch.softmax(torch.einsum("bhpe,bhme->bhpm", q, k) * _default_scale(q, scale),
                            dim=-1)
    clipped = torch.clamp((zeta - gamma) * weights + gamma, 0.0, 1.0)
    gate = torch.sigmoid(torch.einsum("bpd,hd->bhp", x, wg))
    return gate.unsqueeze(-1) * (clipped @ v)


def neighborhood_mask(p: int, m: int, window: int) -> torch.Tensor:
    """Neighborhood Attention's key set (Hassani et al. 2023, dilation 1): for query i the
    `window` keys from clamp(i - window // 2, 0, m - window), all keys when m <= window."""
    start = (torch.arange(p) - window // 2).clamp(min=0).clamp(max=max(m - window, 0))
    keys = torch.arange(m)
    return (keys[None, :] >= start[:, None]) & (keys[None, :] < start[:, None] + window)


def neighborhood_1d(q, k, v, W=5, scale=None):
    return softmax_attention(q, k, v, scale, neighborhood_mask(q.shape[-2], k.shape[-2], W))


def neighborhood_2d(q, k, v, KS=3, IW=4, scale=None):
    """2-D Neighborhood Attention (Hassani et al. 2023, dilation 1) over an image of width
    IW stored in raster order: pixel (y, x) sees rows and columns clamp(c - KS // 2, 0,
    n - KS) .. + KS - 1 per axis (n the image's height ceil(M / IW) or its width IW)."""
    p, m = q.shape[-2], k.shape[-2]

    def window(coordinate, n):
        start = (coordinate - KS // 2).clamp(min=0).clamp(max=max(n - KS, 0))
        return start[:, None], start[:, None] + KS

    queries, keys = torch.arange(p), torch.arange(m)
    height = -(-m // IW)
    (top, bottom), (left, right) = window(queries // IW, height), window(queries % IW, IW)
    rows, columns = (keys // IW)[None, :], (keys % IW)[None, :]
    mask = (rows >= top) & (rows < bottom) & (columns >= left) & (columns < right)
    return softmax_attention(q, k, v, scale, mask)


def squeeze_excitation(x, w1, w2):
    """Hu et al. 2018, "Squeeze-and-Excitation Networks": s = sigmoid(W2 relu(W1 z)) with
    z the per-channel mean over the pixels; the output is x scaled per channel by s."""
    z = x.mean(dim=(2, 3))
    s = torch.sigmoid(torch.relu(z @ w1.T) @ w2.T)
    return x * s[:, :, None, None]


def retention(q, k, v, scale=None):
    """RetNet's parallel retention (Sun et al. 2023): (Q K^T * scale * D) V with
    D[n, m] = gamma^(n - m) for m <= n, else 0, and gamma = 1 - 2^(-5 - h) per head h."""
    heads, p, m = q.shape[1], q.shape[-2], k.shape[-2]
    gamma = 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float64))
    distance = (torch.arange(p)[:, None] - torch.arange(m)[None, :]).to(torch.float64)
    decay = torch.where(distance >= 0, gamma[:, None, None] ** distance.clamp(min=0), 0.0)
    scores = torch.einsum("bhpe,bhme->bhpm", q, k) * _default_scale(q, scale)
    return (scores * decay) @ v


def softpick_attention(q, k, v, eps=1e-6, scale=None):
    """Softpick (Zuhri et al. 2025) in place of softmax, causal: weights
    relu(e^s - 1) / (sum over the row's keys of |e^s - 1| + eps), unshifted (float64)."""
    scores = torch.einsum("bhpe,bhme->bhpm", q, k) * _default_scale(q, scale)
    keep = causal_mask(q.shape[-2], k.shape[-2])
    shifted = torch.where(keep, torch.expm1(scores), 0.0)
    weights = torch.relu(shifted) / (shifted.abs().sum(dim=-1, keepdim=True) + eps)
    return weights @ v


def normalized_attention(q, k, v, eps=1e-5, scale=None):
    """Richter and Wattenhofer 2020, "Normalized Attention Without Probability Cage":
    the scores standardised over the keys (mean 0, variance 1, as a layer norm) as the
    weights."""
    scores = torch.einsum("bhpe,bhme->bhpm", q, k) * _default_scale(q, scale)
    mean = scores.mean(dim=-1, keepdim=True)
    variance = scores.var(dim=-1, unbiased=False, keepdim=True)
    return (scores - mean) / torch.sqrt(variance + eps) @ v


def stick_breaking_attention(q, k, v, scale=None):
    """Stick-breaking attention (Tan et al. 2025): key m < p gets
    beta[p, m] * prod_{m < j < p} (1 - beta[p, j]), beta = sigmoid(q . k * scale): walking
    from the nearest key back, each breaks off its share of what is left (a product, row
    by row; the spec sums logs instead)."""
    beta = torch.sigmoid(torch.einsum("bhpe,bhme->bhpm", q, k) * _default_scale(q, scale))
    weights = torch.zeros_like(beta)
    for p in range(q.shape[-2]):
        keys = min(p, k.shape[-2])                       # the keys m < p
        nearest_first = beta[..., p, :keys].flip(-1)
        left = torch.cumprod(torch.cat([torch.ones_like(nearest_first[..., :1]),
                                        1 - nearest_first[..., :-1]], dim=-1), dim=-1)
        weights[..., p, :keys] = (nearest_first * left).flip(-1)
    return weights @ v


def cbam(x, w1, w2, wa, wm):
    """CBAM (Woo et al. 2018): channel attention sigmoid(MLP(avg pool) + MLP(max pool)),
    the MLP W2 relu(W1 z) shared, then spatial attention sigmoid(conv7x7([mean_c; max_c]))
    with zero padding, each multiplied in."""
    def mlp(z):
        return torch.relu(z @ w1.T) @ w2.T
    channel = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    xc = x * channel[:, :, None, None]
    maps = torch.stack([xc.mean(dim=1), xc.amax(dim=1)], dim=1)
    weight = torch.stack([wa, wm])[None]                       # [1, 2, 7, 7]
    spatial = torch.sigmoid(F.conv2d(maps, weight, padding=wa.shape[-1] // 2))
    return xc * spatial


def aaren(q, k, v, scale=None):
    """Aaren (Feng et al. 2024, "Attention as an RNN"): one learned query q[h] per head;
    output p is softmax attention of q over the tokens 0..p (a loop over the prefixes)."""
    scores = torch.einsum("he,bhme->bhm", q, k) * _default_scale(q, scale)
    out = torch.zeros(*v.shape[:2], k.shape[-2], v.shape[-1], dtype=v.dtype)
    for p in range(k.shape[-2]):
        weights = torch.softmax(scores[..., :p + 1], dim=-1)
        out[..., p, :] = torch.einsum("bhm,bhmf->bhf", weights, v[..., :p + 1, :])
    return out


def efficient_attention(q, k, v):
    """Efficient Attention (Shen et al. 2021): softmax_features(Q) (softmax_positions(K)^T V),
    the keys' context E x F first."""
    context = torch.einsum("bhme,bhmf->bhef", torch.softmax(k, dim=-2), v)
    return torch.einsum("bhpe,bhef->bhpf", torch.softmax(q, dim=-1), context)


def cosine_attention(q, k, v, tau):
    """Swin Transformer V2's scaled cosine attention (Liu et al. 2022):
    softmax(cos(q_p, k_m) / max(tau_h, 0.01)) V."""
    cosine = torch.einsum("bhpe,bhme->bhpm", F.normalize(q, dim=-1), F.normalize(k, dim=-1))
    return torch.softmax(cosine / tau.clamp(min=0.01)[:, None, None], dim=-1) @ v
