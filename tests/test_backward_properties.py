"""The fast backward's rules on random cascades: whatever spec the rules meet, the
rewritten backward (run on what the forward saved) computes the raw gradient cascade's
values (tests/test_grad.py checks the raw one against finite differences). Random
attention-like cascades (tests/test_rewrites.py: biases, soft caps, two softmaxes
subtracted, clipped weights, deferred division, masks that empty rows) and the general
random cascades of tests/spec_generator.py."""

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import einsumattn
from einsumattn.transform.backward import fast_backward
from einsumattn.transform.grad import GradientUnsupported

from conftest import examples
from test_backward import both_on
from test_rewrites import _inputs, attention_specs

try:
    from . import spec_generator as gen
except ImportError:
    import spec_generator as gen

PROPS = settings(max_examples=examples(30), deadline=None,
                 phases=[Phase.explicit, Phase.reuse, Phase.generate],
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much])


def _agree(cascade, inputs: dict, seed: int, what: str) -> None:
    """The fast backward's gradients against the raw gradient cascade's, float64."""
    try:
        backward = fast_backward(cascade)
    except GradientUnsupported:
        return
    expected, got, _ = both_on(cascade, inputs, seed, backward)
    for name in backward.gradients.values():
        want, have = np.asarray(expected[name]), np.asarray(got[name])
        finite = np.isfinite(want)
        # Where the raw cascade is finite the fast one must agree: its rules reassociate
        # sums and cancel a shift, a few ulps per term of float64 (1e-9 relative to the
        # largest term). A raw NaN/inf (a gradient through a point where the forward is
        # not differentiable) is not compared.
        scale = max(1.0, float(np.max(np.abs(want[finite]), initial=0.0)))
        assert np.allclose(have[finite], want[finite], rtol=1e-8, atol=1e-9 * scale), \
            f"{name}\n{what}\n{backward.text()}"


@PROPS
@given(spec=attention_specs(), m=st.integers(1, 7), p=st.integers(1, 5),
       logit=st.sampled_from([1.0, 10.0, 100.0]), seed=st.integers(0, 2**16))
def test_property_the_fast_backward_of_attention_like_cascades(spec, m, p, logit, seed):
    text = spec[0]
    cascade = einsumattn.load(text)
    inputs = _inputs(cascade, {"P": p, "M": m, "E": 2, "F": 2}, logit, seed)
    _agree(cascade, inputs, seed, f"M={m} P={p} scale={logit}\n{text}")


@PROPS
@given(spec=gen.cascades(), data=st.data())
def test_property_the_fast_backward_of_generated_cascades(spec, data):
    sizes = data.draw(gen.sizes_for(spec), label="sizes")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    cascade = einsumattn.load(spec.text)
    inputs = gen.random_inputs(spec, sizes, seed)
    _agree(cascade, inputs, seed, f"sizes={sizes}\n{spec.text}")
