"""The functions of LANGUAGE.md 1.1: softplus, logsigmoid, log1p, expm1, silu, erf. What
the oracle computes (against torch in float64), that each backend computes the same
(the torch reference, the scheduled torch backend, Triton fused and unfused in the
interpreter), the Triton helpers at the edges of their domains, and that the names stay
free for tensors and params (a 1.0 spec that uses one keeps working)."""

import math
import warnings

import numpy as np
import pytest
import torch

import einsumattn
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.diagnostics import SpecError
from einsumattn.ir import semantics
from einsumattn.ir.printer import cascade_text
from einsumattn.verify import Case, case_inputs, compare, dot_rounding

NEW = ("softplus", "logsigmoid", "log1p", "expm1", "silu", "erf")

TORCH = {"softplus": lambda x: torch.logaddexp(torch.zeros_like(x), x),
         "logsigmoid": torch.nn.functional.logsigmoid, "log1p": torch.log1p,
         "expm1": torch.expm1, "silu": torch.nn.functional.silu, "erf": torch.erf}

EDGES = [-800.0, -100.0, -30.0, -1.5, -1e-12, -0.0, 0.0, 1e-30, 1e-7, 0.5, 3.0, 30.0, 700.0,
         math.inf, -math.inf, math.nan]

ALL = """attention fns
dims B, P, M, E, F
input Q[b, p, e], K[b, m, e], V[b, m, f]
S[b, p, m] = Q[b, p, e] * K[b, m, e] / sqrt(E)
T[b, p, m] = softplus(S[b, p, m]) + logsigmoid(S[b, p, m]) + log1p(abs(S[b, p, m])) + expm1(S[b, p, m] * 0.5) + silu(S[b, p, m]) + erf(S[b, p, m])
O[b, p, f] = T[b, p, m] * V[b, m, f]
output O
"""


@pytest.mark.parametrize("name", NEW)
def test_the_oracle_computes_each_function_as_torch_in_float64(name):
    x = np.array(EDGES, dtype=np.float64)
    got = semantics.apply(name, [x])
    want = TORCH[name](torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-300, equal_nan=True)


def test_softplus_does_not_overflow():
    assert semantics.apply("softplus", [np.array([1000.0])])[0] == 1000.0
    assert semantics.apply("logsigmoid", [np.array([-1000.0])])[0] == -1000.0


def test_the_names_stay_free_for_tensors_and_params():
    spec = """attention names
dims P, E
input softplus[p, e]
param erf = 2
silu[p] = sum[e] softplus[p, e] * erf
log1p[p] = erf(silu[p]) + expm1(log1p(silu[p]))
output log1p
"""
    cascade = einsumattn.load(spec)
    assert {"softplus", "silu", "log1p"} <= set(cascade.tensors)
    text = cascade_text(cascade)
    assert cascade_text(einsumattn.load(text)) == text             # prints back


def test_a_misspelt_function_suggests_the_new_name():
    with pytest.raises(SpecError) as error:
        einsumattn.load(ALL.replace("softplus(S", "softpluss(S"))
    assert "softplus" in str(error.value)


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("functions")
    spec = folder / "fns.attn"
    spec.write_text(ALL)
    return einsumattn.load(spec), import_file(compile_to_file(spec, folder / "out"),
                                              "language_functions")


@pytest.mark.parametrize("backend", ["reference", "torch", "triton", "triton-unfused"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_backend_matches_the_oracle(module, backend, dtype):
    cascade, generated = module
    # scale 1: expm1(S / 2) stays far from float32's overflow
    inputs = case_inputs(cascade, Case(dict(B=2, P=19, M=37, E=8, F=5), dtype, 1.0, False, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = generated.Fns(backend=backend)(*inputs.values())
    rounding = dot_rounding(cascade, generated) if backend == "triton" else None
    assert all(r.ok for r in compare(cascade, inputs, out, dtype, rounding=rounding))


def _elementwise(name: str, tmp_path):
    spec = tmp_path / f"{name}.attn"
    spec.write_text(f"attention one\ndims P\ninput X[p]\nY[p] = {name}(X[p])\noutput Y\n")
    return import_file(compile_to_file(spec, tmp_path / "out"), f"language_{name}")


@pytest.mark.parametrize("name", NEW)
def test_the_triton_helpers_hold_at_the_edges(tmp_path, name):
    """Each function over float32 values from -800 to 700, +-0, tiny ones, inf and NaN,
    against the oracle's value rounded to float32 (inf where float32 overflows): within
    4 ulp, plus |x| ulp where an exponential's tail decides the value (exp of an
    argument rounded to float32 is off by |argument| * 2**-24 relative: the
    _sigmoid helper's, and torch's own), plus float32's smallest normal times 1 + |x|
    (a subnormal intermediate); erf is Triton's, 2e-6 relative."""
    x = torch.tensor(EDGES, dtype=torch.float32)
    want = torch.from_numpy(semantics.apply(name, [x.double().numpy()])).float().double()
    tail = name in ("softplus", "logsigmoid", "silu", "expm1")
    rtol = 2e-6 if name == "erf" else 4 * 2.0 ** -24
    allowed = rtol * want.abs() + (x.double().abs() * 2.0 ** -23 * want.abs() if tail else 0)
    # Below float32's smallest normal an intermediate holds 2**-149 absolute (and the
    # GPU's exp2 flushes it to 0), which |x| then scales (silu's x * sigmoid(x)).
    allowed = allowed + (1 + x.double().abs()) * 2.0 ** -126
    module = _elementwise(name, tmp_path)
    for backend in ("triton-unfused", "torch"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = module.One(backend=backend)(x).double()
        close = ((got - want).abs() <= allowed) | (got == want) | (got.isnan() & want.isnan())
        assert close.all(), (backend, x[~close], got[~close], want[~close])
