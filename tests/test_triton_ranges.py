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
from einsumattn.verify import Case, case_inputs, compare, drawn_ranks

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
    with outside_the_tensors() as outside:
        yield
    assert_inside_the_tensors(outside)


def assert_inside_the_tensors(outside: dict) -> None:
    """Fail where `outside_the_tensors` counted a live lane outside every tensor."""
    assert not outside, f"live lanes outside every tensor, by kernel: {outside}"


@contextlib.contextmanager
def outside_the_tensors():
    """Yields kernel name -> live lanes it loaded or stored at an address outside every
    tensor passed to it, counted (not raised: a test may check the results first),
    through pointers and through TMA descriptors alike (the interpreter emulates them)."""
    from triton.runtime import interpreter

    outside: dict[str, int] = {}
    ranges: list[tuple[int, int]] = []
    running = [None]
    init_args, load, store = (interpreter.GridExecutor._init_args_hst,
                              interpreter.InterpreterBuilder.create_masked_load,
                              interpreter.InterpreterBuilder.create_masked_store)

    def record(self, args, kwargs):
        hosted = init_args(self, args, kwargs)
        running[0] = getattr(self.fn, "__name__", repr(self.fn))
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
        if not inside.all():
            outside[running[0]] = outside.get(running[0], 0) + int((~inside).sum())

    def checked_load(self, pointers, mask, *rest, **options):
        check(pointers, mask)
        return load(self, pointers, mask, *rest, **options)

    def checked_store(self, pointers, value, mask, *rest, **options):
        check(pointers, mask)
        return store(self, pointers, value, mask, *rest, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interpreter.GridExecutor, "_init_args_hst", record)
        patch.setattr(interpreter.InterpreterBuilder, "create_masked_load", checked_load)
        patch.setattr(interpreter.InterpreterBuilder, "create_masked_store", checked_store)
        yield outside


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

    @triton.jit
    def shifted_copy(out_ptr, in_ptr, n, BLOCK: tl.constexpr):
        lanes = tl.arange(0, BLOCK)
        tl.store(out_ptr + lanes, tl.load(in_ptr + lanes + 1, mask=lanes < n), mask=lanes < n)

    source, out = torch.arange(8.0), torch.empty(8)
    with loads_and_stores_in_bounds():
        shifted_copy[(1,)](out, source, 7, BLOCK=8)
    # The checker counts the lanes as the kernel runs and fails when the block ends.
    with pytest.raises(AssertionError, match="live lanes outside every tensor"):
        with loads_and_stores_in_bounds():
            shifted_copy[(1,)](out, source[:7].clone(), 7, BLOCK=8)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_stays_inside_its_tensors(tmp_path, path):
    """Both Triton schedules of every example, at sizes that leave every tile partial:
    no live lane touches memory outside the tensors it was given."""
    cascade = einsumattn.load(path)
    sizes = {r: 5 for r in drawn_ranks(cascade)}
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, False, 0))
    module = import_file(compile_to_file(cascade, tmp_path), f"bounds_{path.stem}")
    cls = getattr(module, module.__all__[0])
    with loads_and_stores_in_bounds():
        for backend in ("triton", "triton-unfused"):
            out = cls(backend=backend)(*inputs.values())
            assert all(r.ok for r in compare(cascade, inputs, out, "float32")), backend


GQA_GROUP = ROOT / "tests" / "spellings" / "gqa_group.attn"


@pytest.mark.parametrize("heads, kv_heads", [(5, 2), (4, 2)])
def test_kv_heads_past_the_end_make_whole_rows_absent_in_the_one_fused_kernel(
        tmp_path, heads, kv_heads):
    """GQA written `K[b, h // (H // KH), m, e]`: where KH does not divide H (H=5, KH=2:
    h=4 reads kv head 2) every key of head h's rows is absent, a condition of the row
    alone. The derived one-pass cascade fuses into one kernel all the same: the schedule
    proves the condition is over the batch and row ranks only, masks every key of such
    a row (as a fully masked row's), and stores the row as 0. Every backend agrees with
    the oracle, and no Triton load or store leaves its tensor."""
    from einsumattn.backends.module import Plan
    from einsumattn.schedule.attention import AttentionRoles

    cascade = einsumattn.load(GQA_GROUP)
    plan = Plan(cascade)
    assert plan.triton.not_fused is None and len(plan.triton.fused) == 1
    assert plan.kernel is plan.rewritten.cascade, plan.note
    roles = AttentionRoles(plan.kernel)
    # The presence of each absent per-row value is the kv head's range, over h alone.
    kv_head = {c for name in ("LSNV", "RSNV", "SNV", "AV") for c in roles.row_presence[name]}
    assert [c.kind for c in kv_head] == ["range"] and \
        {v for c in kv_head for v in c.variables} == {"h"}
    (store,) = plan.triton.fused[0].schedule.stores
    assert len(store.absent_unless) == 1 and \
        {c.kind for c in store.absent_unless} == {"range"}
    from einsumattn.backends import torch_scheduled
    assert torch_scheduled.schedule(plan.kernel).fallback is None   # not the reference

    path = tmp_path / GQA_GROUP.name
    path.write_text(GQA_GROUP.read_text())
    (tmp_path / "rewrite_True").mkdir()
    sizes = dict(B=2, H=heads, KH=kv_heads, P=19, M=21, E=3, F=2)
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, False, 0))
    with loads_and_stores_in_bounds():
        failures = run_backends(path, sizes, ("reference", "torch", "triton",
                                              "triton-unfused"), True, inputs=inputs)
    assert not failures, failures
    out = einsumattn.evaluate(cascade, inputs)["AV"]
    absent_heads = [h for h in range(heads) if h // (heads // kv_heads) >= kv_heads]
    assert bool((out[:, absent_heads] == 0).all()) and bool(out[:, :1].any())
    assert absent_heads == ([4] if heads == 5 else [])


# Absences the fused schedule must not fold into its masks: name -> (spec, sizes, reason).
NOT_OF_THE_ROW = {
    # `V[b, h, m, f + 1]` leaves V's last feature: absent at f = F - 1, within a row.
    "shifted_feature": (CAUSAL.replace("* V[b, h, m, f]", "* V[b, h, m, f + 1]"),
                        dict(B=1, H=2, P=5, M=6, E=2, F=3),
                        "a per-row value that may be absent"),
    # O is present where W <= 0 even on an absent row (H=5: head 4 reads kv head 2):
    # whether it is present depends on W's values, not on the row.
    "picked_branch": (GQA.replace("h * KH // H", "h // 2").replace(
        "input Q[b, h, p, e],", "input W[b, h, p, f], Q[b, h, p, e],").replace(
        "output AV", "O[b, h, p, f] = where(W[b, h, p, f] > 0, AV[b, h, p, f], 1.0)\n"
                     "output O"),
                      dict(B=1, H=5, KH=2, P=5, M=6, E=2, F=3),
                      "depends on the condition of a where(...)"),
}


@pytest.mark.parametrize("name", sorted(NOT_OF_THE_ROW))
def test_an_absence_that_is_not_of_the_row_alone_keeps_the_unfused_schedule(tmp_path, name):
    """The schedule folds only conditions it proved to be over the row's ranks; anything
    else keeps the unfused kernels, with the reason, and every backend stays exact."""
    from einsumattn.backends.module import Plan
    text, sizes, reason = NOT_OF_THE_ROW[name]
    path = tmp_path / f"{name}.attn"
    path.write_text(re.sub(r"(?m)^attention \w+", f"attention {name}", text))
    plan = Plan(einsumattn.load(path))
    assert not plan.triton.fused and reason in plan.triton.not_fused
    (tmp_path / "rewrite_True").mkdir()
    with loads_and_stores_in_bounds():
        failures = run_backends(path, sizes, ("reference", "torch", "triton"), True)
    assert not failures, failures


@pytest.mark.parametrize("name, sizes, train", [
    ("linear_attention", dict(B=1, H=1, P=17, M=20, E=16, F=8), False),
    ("linear_attention", dict(B=1, H=1, P=8, M=40, E=20, F=8), False),
    ("causal_softmax", dict(B=1, H=1, P=17, M=20, E=8, F=16), True)])
def test_a_loop_without_masks_reads_no_row_past_the_rank(tmp_path, name, sizes, train):
    """A whole tile is a loop without masks, and one row past a row tile is a row past
    the rank there: linear attention's second stage reads Q at its rows (P = 17) in its
    loop over E = 16, its first stage K at its rows (E = 20: the rows of that kernel are
    E's) over the key tiles, the backward's statistics kernel dAV and AV in its loop
    over F = 16. They read past those tensors before such a load read the rows clamped
    into their rank (a strided position: schedule/interior.py, rows_clamped) or kept the
    row mask (the last, contiguous position: without_masks)."""
    path = ROOT / "examples" / f"{name}.attn"
    cascade = einsumattn.load(path)
    module = import_file(compile_to_file(cascade, tmp_path, train=train), f"rows_{name}")
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, False, 0))
    if train:
        inputs = {n: t.detach().requires_grad_(True) for n, t in inputs.items()}
    with loads_and_stores_in_bounds():
        out = getattr(module, module.__all__[0])(backend="triton")(*inputs.values())
        if train:
            out.sum().backward()
    assert all(r.ok for r in compare(cascade, {n: t.detach() for n, t in inputs.items()},
                                     out.detach(), "float32"))
