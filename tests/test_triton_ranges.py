"""Reads past the end of a rank in the Triton kernels: such a coordinate is absent
(LANGUAGE.md), in both Triton schedules and whichever cascade they compute (the spec's
own or the derived one), and the kernels never touch memory outside their tensors to
find that out."""

import contextlib
import re
import warnings

import numpy as np
import pytest
import torch

import einsumattn
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.verify import Case, case_inputs, compare

from conftest import EXAMPLES, GPU, ROOT

CAUSAL = (ROOT / "examples" / "causal_softmax.attn").read_text()
SINKS = (ROOT / "examples" / "sliding_window_sinks.attn").read_text()
GQA = (ROOT / "examples" / "gqa.attn").read_text()

# name -> (spec text, sizes that send the shifted read past the end of its rank)
READS_PAST_THE_END = {
    # The case: a query-rank tensor indexed by the batch variable (B > P).
    "sinks_sd_at_batch": (SINKS.replace("SN[b, h, p, m] / SD[b, h, p]",
                                        "SN[b, h, p, m] / SD[b, h, b]"),
                          dict(B=5, H=1, P=3, M=2, E=2, F=2)),
    "sd_at_next_row": (CAUSAL.replace("SN[b, h, p, m] / SD[b, h, p]",
                                      "SN[b, h, p, m] / SD[b, h, p + 1]"),
                       dict(B=1, H=2, P=17, M=19, E=3, F=2)),
    "q_at_next_row": (CAUSAL.replace("Q[b, h, p, e] *", "Q[b, h, p + 1, e] *"),
                      dict(B=1, H=2, P=17, M=19, E=3, F=2)),
    "k_at_next_key": (CAUSAL.replace("* K[b, h, m, e]", "* K[b, h, m + 1, e]"),
                      dict(B=1, H=2, P=17, M=19, E=3, F=2)),
    "v_at_previous_key": (CAUSAL.replace("* V[b, h, m, f]", "* V[b, h, m - 1, f]"),
                          dict(B=1, H=2, P=17, M=19, E=3, F=2)),
    "k_at_batch_plus_key": (CAUSAL.replace("* K[b, h, m, e]", "* K[b, h, b + m, e]"),
                            dict(B=3, H=1, P=5, M=4, E=2, F=2)),
    # h // 2 leaves KH when H > 2 KH.
    "kv_head_halved": (GQA.replace("h * KH // H", "h // 2"),
                       dict(B=1, H=7, KH=2, P=5, M=6, E=2, F=3)),
}


@contextlib.contextmanager
def loads_and_stores_in_bounds():
    """Fail if a kernel run in Triton's interpreter loads or stores, on a live lane, at
    an address outside every tensor passed to it (an out-of-bounds access on a GPU).
    On a GPU (conftest.GPU) the kernels are compiled and this checks nothing: the tests
    still compare every output with the oracle there."""
    if GPU:
        yield
        return
    from triton.runtime import interpreter

    ranges: list[tuple[int, int]] = []
    init_args, load, store = (interpreter.GridExecutor._init_args_hst,
                              interpreter.InterpreterBuilder.create_masked_load,
                              interpreter.InterpreterBuilder.create_masked_store)

    def record(self, args, kwargs):
        hosted = init_args(self, args, kwargs)
        for arg in list(hosted[0]) + list(hosted[1].values()):
            if isinstance(arg, torch.Tensor):
                last = sum((size - 1) * stride for size, stride in zip(arg.shape, arg.stride()))
                ranges.append((arg.data_ptr(), arg.data_ptr() + (last + 1) * arg.element_size()))
        return hosted

    def check(pointers, mask):
        live = pointers.data[np.broadcast_to(mask.data, pointers.data.shape)].astype(np.int64)
        inside = np.zeros(live.shape, dtype=bool)
        for low, high in ranges:
            inside |= (live >= low) & (live < high)
        assert inside.all(), f"{int((~inside).sum())} live lanes outside every tensor"

    def checked_load(self, pointers, mask, *rest):
        check(pointers, mask)
        return load(self, pointers, mask, *rest)

    def checked_store(self, pointers, value, mask, *rest):
        check(pointers, mask)
        return store(self, pointers, value, mask, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interpreter.GridExecutor, "_init_args_hst", record)
        patch.setattr(interpreter.InterpreterBuilder, "create_masked_load", checked_load)
        patch.setattr(interpreter.InterpreterBuilder, "create_masked_store", checked_store)
        yield


def run_backends(path, sizes, backends, rewrite, dtype="float32", inputs=None):
    """Each backend's comparison with the oracle (a list of failures, empty if none)."""
    cascade = einsumattn.load(path)
    module = import_file(compile_to_file(cascade, path.parent / f"rewrite_{rewrite}",
                                         rewrite=rewrite),
                         f"ranges_{cascade.name}_{rewrite}")
    cls = getattr(module, module.__all__[0])
    inputs = inputs or case_inputs(cascade, Case(sizes, dtype, 1.0, False, 0))
    failures = []
    for backend in backends:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = cls(backend=backend)
        outputs = layer(*inputs.values())
        results = compare(cascade, inputs, outputs, dtype)
        failures += [f"{backend}: {r.describe()}" for r in results if not r.ok]
    return failures


@pytest.mark.parametrize("rewrite", [True, False], ids=["derived", "own"])
@pytest.mark.parametrize("name", sorted(READS_PAST_THE_END))
def test_reads_past_the_end_are_absent_in_both_triton_schedules(tmp_path, name, rewrite):
    text, sizes = READS_PAST_THE_END[name]
    path = tmp_path / f"{name}.attn"
    path.write_text(re.sub(r"(?m)^attention \w+", f"attention {name}", text))
    (tmp_path / f"rewrite_{rewrite}").mkdir()
    with loads_and_stores_in_bounds():
        failures = run_backends(path, sizes, ("triton", "triton-unfused"), rewrite)
    assert not failures, failures


@pytest.mark.skipif(GPU, reason="the bounds checker hooks Triton's interpreter")
def test_the_bounds_checker_sees_a_load_past_the_end():
    """The checker is not vacuous: a kernel that reads one element past its tensor
    fails it."""
    import triton
    import triton.language as tl
    from triton.runtime.errors import InterpreterError

    @triton.jit
    def shifted_copy(out_ptr, in_ptr, n, BLOCK: tl.constexpr):
        lanes = tl.arange(0, BLOCK)
        tl.store(out_ptr + lanes, tl.load(in_ptr + lanes + 1, mask=lanes < n), mask=lanes < n)

    source, out = torch.arange(8.0), torch.empty(8)
    with loads_and_stores_in_bounds():
        shifted_copy[(1,)](out, source, 7, BLOCK=8)
        # The checker raises before the interpreter reads the element past the end.
        with pytest.raises(InterpreterError, match="live lanes outside every tensor"):
            shifted_copy[(1,)](out, source[:7].clone(), 7, BLOCK=8)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_stays_inside_its_tensors(tmp_path, path):
    """Both Triton schedules of every example, at sizes that leave every tile partial:
    no live lane touches memory outside the tensors it was given."""
    cascade = einsumattn.load(path)
    sizes = {r.name: 5 for r in cascade.ranks.values() if r.fixed is None and r.split_of is None}
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, False, 0))
    module = import_file(compile_to_file(cascade, tmp_path), f"bounds_{path.stem}")
    cls = getattr(module, module.__all__[0])
    with loads_and_stores_in_bounds():
        for backend in ("triton", "triton-unfused"):
            out = cls(backend=backend)(*inputs.values())
            assert all(r.ok for r in compare(cascade, inputs, out, "float32")), backend
