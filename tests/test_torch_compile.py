"""torch.compile (issue 17, item 2): every generated module registers its backends as
PyTorch custom ops (templates/module.py.j2, docs/torch_compile.md). These tests check
the ops with torch.library.opcheck (schema, fake implementation against the real one,
autograd registration, AOT dispatch with dynamic shapes) on every example, and that a
model calling a compiled spec traces with fullgraph=True, compiles once for several
sequence lengths, and computes the eager outputs and gradients."""

from __future__ import annotations

import os
import re
import shutil
import sys

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import einsumattn
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.verify import Case, case_inputs, drawn_ranks

from conftest import EXAMPLES, GPU

DEVICE = "cuda" if GPU else "cpu"
# The Triton backends run on the CPU in Triton's interpreter (conftest sets it).
TRITON = GPU or os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("compiled")


def _module(folder, stem: str, **options):
    suffix = "_train" if options.get("train") else ""
    path = compile_to_file(next(p for p in EXAMPLES if p.stem == stem), folder / (stem + suffix),
                           **options)
    return import_file(path, f"torch_compile_{stem}{suffix}")


def _inputs(cascade, size: int = 5, seed: int = 0, grad: bool = True, **sizes) -> list:
    """Small float32 inputs (each drawn rank `size`, or as `sizes` says), needing
    gradients where floating."""
    case = Case({r: sizes.get(r, size) for r in drawn_ranks(cascade)}, "float32", 1.0, True,
                seed)
    return [t.to(DEVICE).requires_grad_(grad and t.is_floating_point())
            for t in case_inputs(cascade, case).values()]


def _cotangents(module, inputs) -> list:
    outputs = module._run("torch", {}, *(t.detach() for t in inputs))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(o.shape, generator=generator).to(o) for o in outputs]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_examples_ops_pass_opcheck(path, folder):
    """Schema, fake implementation (shapes, dtypes, strides against the real run),
    autograd registration and AOT dispatch with dynamic shapes, on the torch backends;
    the backward op alike, with one input not wanting a gradient."""
    module = _module(folder, path.stem)
    cascade = einsumattn.load(path)
    inputs = _inputs(cascade)
    cotangents = _cotangents(module, inputs)
    needs = [t.requires_grad for t in inputs]
    needs[0] = False
    nothing = [None] * len(module.PARAMS)
    # Every check on the torch backend; the reference differs only in what the op's
    # implementation runs, so its fake-against-real check is what can tell (the
    # autograd and AOT checks exercise the same wrapper code: once per example is enough,
    # and the suite's 15 minutes are shared).
    torch.library.opcheck(module.OPS["forward"], (*inputs, "torch", *nothing))
    torch.library.opcheck(module.OPS["forward"], (*inputs, "reference", *nothing),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(module.OPS["backward"],
                          (*(t.detach() for t in inputs), *cotangents, "torch", *nothing,
                           needs), test_utils=("test_schema", "test_faketensor",
                                               "test_aot_dispatch_dynamic"))


@pytest.mark.skipif(not TRITON, reason="needs a GPU or Triton's interpreter")
@pytest.mark.parametrize("stem", ["causal_softmax", "sigmoid_attention"])
def test_the_triton_ops_pass_opcheck(stem, folder):
    """The Triton backend as an op (backend="triton-unfused" differs from it only in the
    string the op passes on), and the training kernels' ops (compile --train): the
    forward that saves what the backward reads (LSE for softmax), the backward's
    kernels from that."""
    module = _module(folder, stem, train=True)
    cascade = einsumattn.load(next(p for p in EXAMPLES if p.stem == stem))
    # two key tiles of the 16 the interpreter's configuration takes
    inputs = _inputs(cascade, size=2, P=17, M=17, E=8, F=8)
    nothing = [None] * len(module.PARAMS)
    torch.library.opcheck(module.OPS["forward"], (*inputs, "triton", *nothing))
    assert set(module.OPS) == {"forward", "backward", "train", "train_backward"}
    torch.library.opcheck(module.OPS["train"], (*inputs, *nothing))
    detached = [t.detach() for t in inputs]
    results = module.OPS["train"](*detached, *nothing)
    saved = results[len(module.OUTPUTS):] if isinstance(results, tuple) else ()
    torch.library.opcheck(module.OPS["train_backward"],
                          (*detached, *saved, *_cotangents(module, inputs), *nothing,
                           [True, False, True]))


def test_a_module_without_training_kernels_has_no_train_ops(folder):
    module = _module(folder, "softcap")
    assert set(module.OPS) == {"forward", "backward"}
    assert set(module.OP_SCHEMAS) == {"forward", "backward"}


def test_the_ops_gradients_are_the_eager_ones(folder):
    """Through the ops (as a compiled graph calls them) the gradients are those of the
    eager call: the backward op replays the torch backend with autograd inside the
    op's implementation, where the dispatcher had turned autograd off."""
    module = _module(folder, "causal_softmax")
    cascade = einsumattn.load(next(p for p in EXAMPLES if p.stem == "causal_softmax"))
    inputs = _inputs(cascade, size=3, P=9, M=9)
    for backend in ("reference", "torch"):
        through_op = module.OPS["forward"](*inputs, backend, 0.3)
        eager = module.causal_softmax(*inputs, backend=backend, scale=0.3)
        with torch.no_grad():     # the op's forward runs without autograd's graph
            torch.testing.assert_close(
                through_op, module.causal_softmax(*inputs, backend=backend, scale=0.3),
                rtol=0, atol=0)
        cotangent = torch.randn_like(eager)
        got = torch.autograd.grad(through_op, inputs, cotangent)
        want = torch.autograd.grad(eager, inputs, cotangent)
        for g, w in zip(got, want):
            assert g.abs().max() > 0
            # the same float32 operations in the same order: equal to the last bit
            torch.testing.assert_close(g, w, rtol=0, atol=0)


class _Block(torch.nn.Module):
    """A transformer's attention block around a compiled spec: projections, the
    spec's attention over (batch, heads, sequence, head dim), the output projection."""

    def __init__(self, attention, width: int = 32, heads: int = 2):
        super().__init__()
        self.heads, self.width = heads, width
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.attention = attention
        self.out = torch.nn.Linear(width, width)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        o = self.attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, n, self.width))


def _compiled_training(model, backend: str, lengths) -> None:
    """`model` compiled with fullgraph=True and dynamic shapes: one graph for every
    length, outputs and parameter gradients as eager."""
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    generator = torch.Generator().manual_seed(0)
    for n in lengths:
        x = torch.randn(2, n, model.width, generator=generator).to(DEVICE)
        model.zero_grad()
        eager = model(x)
        eager.square().sum().backward()
        want = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        got = compiled(x)
        got.square().sum().backward()
        # The ops compute as the eager call; what differs is the compiler's own code
        # around them (inductor's matmuls and reductions, float32): a few ulps of
        # values of magnitude up to 1e2 (outputs) and 1e3 (gradients).
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
        for g, w in zip((p.grad for p in model.parameters()), want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times for {lengths}"


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_a_model_traces_with_fullgraph_once_for_every_length(backend, folder):
    module = _module(folder, "causal_softmax")
    torch.manual_seed(0)
    _compiled_training(_Block(module.CausalSoftmax(backend=backend)).to(DEVICE),
                       "aot_eager", (17, 40, 65))


@pytest.mark.skipif(not TRITON, reason="needs a GPU or Triton's interpreter")
def test_a_model_trains_compiled_on_the_triton_training_kernels(folder):
    """backend="triton" with compile --train: the compiled graph runs the training
    forward (saving LSE) and the backward's kernels, as ops."""
    module = _module(folder, "causal_softmax", train=True)
    torch.manual_seed(0)
    model = _Block(module.CausalSoftmax(backend="triton")).to(DEVICE)
    _compiled_training(model, "aot_eager", (17, 40))


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None and not GPU,
                    reason="inductor on the CPU needs a C++ compiler")
def test_a_model_compiles_with_inductor(folder):
    """Inductor checks the real outputs' strides against the fake implementations'
    (contiguous): a gradient autograd left transposed must be made contiguous."""
    module = _module(folder, "softcap")
    torch.manual_seed(0)
    _compiled_training(_Block(module.Softcap(backend="torch")).to(DEVICE), "inductor",
                       (17, 40))


def test_a_module_imported_twice_registers_ops_of_its_own(folder, monkeypatch):
    """Each copy's ops call that copy's functions (its own tuning tables); the name
    carries the spec's and options' hash, and a number for a later copy."""
    path = compile_to_file(next(p for p in EXAMPLES if p.stem == "softcap"), folder / "twice")
    first = import_file(path, "torch_compile_twice_a")
    second = import_file(path, "torch_compile_twice_b")
    hashed = re.compile(r"einsumattn::softcap_[0-9a-f]{8}(_[0-9]+)?_forward")
    assert hashed.fullmatch(first.OPS["forward"].name())
    assert hashed.fullmatch(second.OPS["forward"].name())
    assert not {op.name() for op in first.OPS.values()} & \
        {op.name() for op in second.OPS.values()}

    class Marker(Exception):
        pass

    def refuse(*args):
        raise Marker

    monkeypatch.setattr(second, "_run", refuse)
    cascade = einsumattn.load(next(p for p in EXAMPLES if p.stem == "softcap"))
    inputs = _inputs(cascade, grad=False)
    first.OPS["forward"](*inputs, "torch", None, None)
    with pytest.raises(Marker):
        second.OPS["forward"](*inputs, "torch", None, None)


def test_eager_calls_do_not_go_through_the_ops(folder, monkeypatch):
    """Eagerly a call runs the backend directly (no dispatcher overhead per call)."""
    module = _module(folder, "softcap")
    monkeypatch.setattr(module, "OPS", {"forward": None, "backward": None})
    cascade = einsumattn.load(next(p for p in EXAMPLES if p.stem == "softcap"))
    module.softcap(*_inputs(cascade, grad=False), backend="torch")


def test_a_tensor_param_is_traced_as_torch_code(folder):
    """A param given as a tensor (learned, say) cannot be an op's float: the call is
    traced as the backend's torch code instead, and still agrees."""
    module = _module(folder, "softcap")
    cascade = einsumattn.load(next(p for p in EXAMPLES if p.stem == "softcap"))
    inputs = _inputs(cascade, grad=False)
    cap = torch.tensor(3.0)
    compiled = torch.compile(lambda *a: module.softcap(*a, backend="reference", cap=cap),
                             backend="eager")
    torch.testing.assert_close(compiled(*inputs),
                               module.softcap(*inputs, backend="reference", cap=3.0))


def test_sys_modules_holds_the_module_dynamo_imports(folder):
    """Dynamo looks functions' modules up by name: import_file keeps the module there."""
    module = _module(folder, "softcap")
    assert sys.modules[module.__name__] is module
