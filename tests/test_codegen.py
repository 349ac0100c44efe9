"""Generated modules: they import without einsumattn, bind and check shapes, agree with
the float64 oracle (torch backend), and are cached and written atomically."""

import math
import subprocess
import sys
import types

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import einsumattn
from einsumattn.codegen import compile_to_file, generate
from einsumattn.codegen.compile import cache_dir, import_file
from einsumattn.verify import (Case, case_inputs, compare, dot_rounding, drawn_ranks,
                               run_check, well_conditioned)

from conftest import EXAMPLES, GPU, ROOT, WINDOW, examples, kernels_env, load_generated
from spec_generator import cascades

CLASS_NAMES = {"softmax_3pass": "Softmax3pass", "gla_recurrent": "GlaRecurrent",
               "sliding_window_sinks": "SlidingWindowSinks", "eca": "Eca"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EINSUMATTN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every example compiled into one folder."""
    folder = tmp_path_factory.mktemp("generated")
    return {path.stem: compile_to_file(path, folder) for path in EXAMPLES}


@pytest.fixture(scope="module")
def built_own(tmp_path_factory):
    """Modules whose kernels keep each spec's own pass structure (--no-rewrite)."""
    folder = tmp_path_factory.mktemp("own")
    return {path.stem: compile_to_file(path, folder, rewrite=False) for path in EXAMPLES}


def test_every_example_imports_and_runs_without_einsumattn(built, tmp_path):
    """A fresh interpreter where `import einsumattn` fails runs every module on both
    backends (Triton in its interpreter) and gets the oracle's outputs, computed here."""
    cases = {}
    for path in EXAMPLES:
        cascade = einsumattn.load(path)
        sizes = {r: 3 for r in drawn_ranks(cascade)}
        inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, False, 0))
        expected = einsumattn.evaluate(cascade, inputs)
        cases[str(built[path.stem])] = (list(inputs.values()),
                                        [torch.from_numpy(v) for v in expected.values()])
    torch.save(cases, tmp_path / "cases.pt")
    script = "\n".join([
        "import importlib.util, sys, torch",
        "sys.modules['einsumattn'] = None",
        "cases = torch.load(sys.argv[1])",
        "for path, (inputs, expected) in cases.items():",
        "    spec = importlib.util.spec_from_file_location('m', path)",
        "    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)",
        "    for backend in ('torch', 'triton'):",
        "        device = sys.argv[2] if backend == 'triton' else 'cpu'",
        "        out = getattr(module, module.__all__[0])(backend=backend)(",
        "            *(i.to(device) for i in inputs))",
        "        out = tuple(o.cpu() for o in (out if isinstance(out, tuple) else (out,)))",
        # float32 arithmetic on values of order 1 and sizes of 3: errors are ~1e-6;
        # the exact tolerance lives in einsumattn.verify, which this process cannot import.
        "        assert all(torch.allclose(o.double(), e, rtol=1e-4, atol=1e-4)",
        "                   for o, e in zip(out, expected)), (path, backend)",
        "    print(path.rsplit('/', 1)[-1], module.INPUTS, module.OUTPUTS)",
    ])
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cases.pt"),
                             "cuda" if GPU else "cpu"],
                            capture_output=True, text=True, env=kernels_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == len(EXAMPLES)


@pytest.mark.parametrize("name, cls", sorted(CLASS_NAMES.items()))
def test_names_follow_the_language(built, name, cls):
    module = import_file(built[name], f"names_{name}")
    assert module.__all__[:2] == [cls, name]
    assert isinstance(getattr(module, name), types.FunctionType)


def test_docstring_carries_spec_and_analysis(built):
    module = import_file(built["softmax_3pass"], "doc_softmax")
    doc = module.__doc__
    assert "GM[b, h, p]    = max[m] QK[b, h, p, m]" in doc
    assert "Why M needs 3 passes" in doc and "GM fully reduces M" in doc


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_torch_backend_agrees_with_the_oracle(path, built):
    cascade = einsumattn.load(path)
    module = import_file(built[path.stem], f"agree_{path.stem}")
    reports = []
    assert run_check(cascade, module, ("torch",), examples=12, report=reports.append), \
        "\n".join(reports)


@given(cascades())
@settings(max_examples=examples(40), deadline=None, suppress_health_check=list(HealthCheck))
def test_torch_backend_agrees_on_random_cascades(spec):
    cascade = einsumattn.load(spec.text)
    module = load_generated(generate(cascade), "random_cascade")
    sizes = {r: 3 for r in cascade.ranks if cascade.ranks[r].fixed is None}
    case = Case(sizes, "float32", 1.0, True, 0)
    inputs = case_inputs(cascade, case)
    outputs = module.reference(*inputs.values())
    results = compare(cascade, inputs, outputs, "float32")
    assert all(r.ok for r in results), (spec.text, [r.describe() for r in results])


def test_check_reports_a_wrong_backend_with_the_smallest_case():
    """A module that is slightly wrong must fail the check, and shrinking must find a
    small case (the check is not vacuous)."""
    cascade = einsumattn.load(ROOT / "examples" / "softmax_3pass.attn")
    source = generate(cascade).replace("A_ = SN_ / SD_[:, :, :, None]",
                                       "A_ = SN_ / (SD_[:, :, :, None] + 1e-3)")
    module = load_generated(source, "wrong")
    lines = []
    assert not run_check(cascade, module, ("reference",), examples=30, report=lines.append)
    assert "smallest failing case:" in lines
    smallest = lines[lines.index("smallest failing case:") + 1]
    # Shrinking reaches the smallest sizes: the error does not need a big case.
    assert "sizes B=1,H=1,P=1,M=1,E=1,F=1" in smallest, lines[-3:]


def test_masks_are_not_optional():
    """Dropping the causal mask must be caught: the generated code is the one place
    masks can go wrong, and the oracle computes them independently."""
    cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    source = generate(cascade)
    assert "QK__ok" in source
    broken = source.replace("QK__ok = ", "QK__ok = torch.ones_like(QK_, dtype=torch.bool) | ")
    module = load_generated(broken, "unmasked")
    assert not run_check(cascade, module, ("torch",), examples=20, report=lambda _: None,
                         shrink=False)


def test_shapes_are_bound_and_checked(built):
    module = import_file(built["softmax_3pass"], "shapes_softmax")
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 6)
    assert module.softmax_3pass(q, k, v, backend="torch").shape == (1, 2, 3, 6)
    with pytest.raises(ValueError, match=r"input K: dimension 2 is rank M, expected 5 "
                                         r"\(from input V\)|input V: dimension 2 is rank M"):
        module.softmax_3pass(q, k, torch.randn(1, 2, 6, 6), backend="torch")
    with pytest.raises(ValueError, match=r"input Q must have 4 dimension\(s\) \(B, H, P, E\)"):
        module.softmax_3pass(q[0], k, v, backend="torch")
    with pytest.raises(TypeError, match="dtype torch.float64"):
        module.softmax_3pass(q.double(), k, v, backend="torch")
    with pytest.raises(TypeError, match="unexpected keyword argument 'scal'"):
        module.Softmax3pass(backend="torch", scal=1.0)


def test_output_dtype_is_the_first_floating_inputs(built):
    module = import_file(built["softmax_3pass"], "dtype_softmax")
    q, k, v = (torch.randn(1, 1, 4, 8, dtype=torch.bfloat16) for _ in range(3))
    assert module.softmax_3pass(q, k, v, backend="torch").dtype == torch.bfloat16


def test_params_override_defaults(built):
    module = import_file(built["softcap"], "params_softcap")
    q, k, v = (torch.randn(1, 1, 4, 8) * 10 for _ in range(3))
    capped = module.softcap(q, k, v, backend="torch", cap=1.0)
    assert not torch.allclose(capped, module.softcap(q, k, v, backend="torch"))


def test_triton_fallback_is_explicit(tmp_path):
    # A recurrence that reads another point of its own state (a neighbour's previous
    # step) has no Triton form yet: programs would race on it.
    path = compile_to_file("attention shifted\ndims T, D\ninput X[t, d]\ninit S[0, d] = 1\n"
                           "S[t+1, d] = S[t, (d + 1) % D] * X[t, d]\noutput S\n", tmp_path)
    module = import_file(path, "fallback_shifted")
    assert "not expressible in Triton yet" in module.TRITON_FALLBACK
    assert "backend='triton' warns and runs torch" in module.__doc__
    with pytest.warns(UserWarning, match="Triton backend is not available"):
        layer = module.Shifted()
    assert layer.backend == "torch"
    x = torch.tensor([[2.0, 3.0], [5.0, 7.0]])
    torch.testing.assert_close(layer(x), torch.tensor([[1.0, 1.0], [2.0, 3.0], [15.0, 14.0]]))


POWERS = "attention powers\ndims P\ninput X[p], Y[p]\nZ[p] = X[p] ** Y[p]\noutput Z\n"


def test_a_power_of_two_tensors_runs_in_triton_as_numpy_computes_it(tmp_path):
    """`**` of any base and exponent (RetNet's gamma ** (p - m)) has a Triton form,
    numpy's power: negative bases with integer exponents keep their sign, with fractions
    give NaN; zero bases give 0 or inf with the zero's sign; y == 0 and x == 1 give 1."""
    module = import_file(compile_to_file(POWERS, tmp_path), "powers")
    assert module.TRITON_FALLBACK is None
    inf, nan = math.inf, math.nan
    pairs = [(2.0, 0.5), (0.9, 17.0), (-2.0, 3.0), (-2.0, -2.0), (-2.0, 0.5), (0.0, 2.0),
             (0.0, -1.0), (-0.0, -1.0), (-0.0, -2.0), (-0.0, -0.5), (0.0, 0.0), (nan, 0.0),
             (1.0, nan), (nan, 2.0), (3.0, inf), (0.5, inf), (inf, -1.0), (-inf, 3.0),
             (-1.5, 2.0), (7.0, -3.5)]
    x = torch.tensor([a for a, _ in pairs])
    y = torch.tensor([b for _, b in pairs])
    expected = torch.from_numpy(np.power(x.numpy(), y.numpy()))
    for backend in ("triton", "triton-unfused"):
        got = module.Powers(backend=backend)(x, y)
        # exp2(y log2 |x|) in float32: a few ulp (0.9 ** 17: |y log2 x| = 2.6).
        torch.testing.assert_close(got, expected, rtol=4e-7, atol=0, equal_nan=True,
                                   msg=backend)
        assert torch.equal(torch.signbit(got[~got.isnan()]),
                           torch.signbit(expected[~expected.isnan()])), backend


def test_a_decay_written_with_a_power_fuses(tmp_path):
    """RetNet's decay in its canonical spelling, gamma_h ** (p - m) (the example), and as
    exp((p - m) log gamma_h) are one fused kernel each (the power fell back to torch
    before `**` of two tensors had a Triton form)."""
    example = (ROOT / "examples" / "retention.attn").read_text()
    assert "(1 - 2 ** (-5 - h)) ** (p - m)" in example
    module = import_file(compile_to_file(ROOT / "examples" / "retention.attn", tmp_path),
                         "retention_example")
    assert module.TRITON_FALLBACK is None and len(module.SCHEDULE["kernels"]) == 1
    text = example.replace("(1 - 2 ** (-5 - h)) ** (p - m)",
                           "exp((p - m) * log(1 - 2 ** (-5 - h)))")
    spec = tmp_path / "retention_exp.attn"
    spec.write_text(text)
    module = import_file(compile_to_file(spec, tmp_path / "out"), "retention_exp")
    assert module.TRITON_FALLBACK is None and len(module.SCHEDULE["kernels"]) == 1
    reports = []
    assert run_check(einsumattn.load(spec), module, ("triton",), examples=4,
                     report=reports.append), "\n".join(reports)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_triton_backend_agrees_with_the_oracle(path, built):
    """Every example has real Triton kernels; here they run in Triton's interpreter."""
    cascade = einsumattn.load(path)
    module = import_file(built[path.stem], f"triton_{path.stem}")
    assert module.TRITON_FALLBACK is None
    reports = []
    assert run_check(cascade, module, ("triton",), examples=6, report=reports.append), \
        "\n".join(reports)


@pytest.mark.parametrize("name", ["causal_softmax", "gqa", "softcap"])
def test_derived_kernels_agree_over_several_key_tiles(tmp_path, name):
    """Compiled with 16-key tiles, hypothesis's sizes (up to 17) take two key tiles: the
    running max and rescaled sums cross a tile boundary in every drawn case that can."""
    path = ROOT / "examples" / f"{name}.attn"
    module = import_file(compile_to_file(path, tmp_path, tile=16), f"tiles16_{name}")
    reports = []
    assert run_check(einsumattn.load(path), module, ("triton",), examples=6,
                     report=reports.append), "\n".join(reports)


def test_compile_caches_and_reuses(tmp_path):
    spec = ROOT / "examples" / "softmax_3pass.attn"
    first = einsumattn.compile(spec, backend="torch")
    path = first.__file__
    assert path.startswith(str(cache_dir()))
    mtime = __import__("os").stat(path).st_mtime_ns
    second = einsumattn.compile(spec, backend="torch")
    assert second.__file__ == path and __import__("os").stat(path).st_mtime_ns == mtime
    changed = spec.read_text().replace("1 / sqrt(E)", "0.5 / sqrt(E)")
    assert einsumattn.compile(changed, backend="torch").__file__ != path
    q = torch.randn(1, 1, 3, 4)
    assert first.compiled(q, q, q).shape == (1, 1, 3, 4)


def test_two_processes_compiling_at_once_both_succeed(tmp_path):
    script = ("import einsumattn, sys; m = einsumattn.compile(sys.argv[1], backend='torch'); "
              "print(m.__file__)")
    spec = str(ROOT / "examples" / "gqa.attn")
    env = dict(__import__("os").environ, EINSUMATTN_CACHE_DIR=str(tmp_path / "shared"))
    procs = [subprocess.Popen([sys.executable, "-c", script, spec], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    leftovers = [f for f in (tmp_path / "shared").rglob("*") if f.name.endswith(".tmp")]
    assert not leftovers


def test_cli_compile_and_check(tmp_path, capsys):
    from einsumattn.cli import main
    assert main(["compile", str(ROOT / "examples" / "alibi.attn"), "-o", str(tmp_path)]) == 0
    assert (tmp_path / "alibi.py").exists()
    assert "triton: one fused kernel alibi__fused" in capsys.readouterr().out
    assert main(["compile", str(ROOT / "examples" / "eca.attn"), "-o", str(tmp_path)]) == 0
    # The convolution across channels reads GAP of other programs: a cut, with its reason.
    assert "triton: 2 fused kernels, cut because Y reads GAP at c + k - K // 2" in \
        capsys.readouterr().out
    assert main(["check", str(ROOT / "examples" / "alibi.attn"), "--examples", "5"]) == 0
    out = capsys.readouterr().out
    assert "checking reference, torch, triton, triton-unfused against the float64 oracle" in out
    assert "all cases agree" in out


@pytest.mark.parametrize("stem", ["my-spec", "2pass", "class"])
def test_a_module_name_that_is_not_an_identifier_is_rejected(tmp_path, stem):
    path = tmp_path / f"{stem}.attn"
    path.write_text("dims P\ninput X[p]\nY[p] = X[p]\noutput Y\n")
    with pytest.raises(einsumattn.SpecError, match=f"module name '{stem}' \\(from the file"):
        compile_to_file(path, tmp_path / "out")
    path.write_text(f"attention ok_name\n{path.read_text()}")
    assert compile_to_file(path, tmp_path / "out").name == "ok_name.py"


def test_math_on_sizes_and_indices_runs_in_triton(tmp_path):
    """sqrt(P), log(p + 1), exp(-p): Triton's math takes floats only, so integer sizes
    and indices are converted; both Triton schedules agree with the oracle."""
    spec = ("attention intmath\ndims P, E\ninput X[p, e]\n"
            "Y[p] = sum[e] X[p, e] * sqrt(E) + log(p + 1) + exp(0 - p) + sigmoid(e)\n"
            "output Y\n")
    module = import_file(compile_to_file(spec, tmp_path), "intmath")
    cascade = einsumattn.load(spec)
    inputs = case_inputs(cascade, Case({"P": 5, "E": 3}, "float32", 1.0, True, 0))
    for backend in ("triton", "triton-unfused"):
        out = module.Intmath(backend=backend)(*inputs.values())
        assert all(r.ok for r in compare(cascade, inputs, out, "float32")), backend


def test_check_reports_a_backend_that_raises_with_its_case(tmp_path):
    path = compile_to_file(ROOT / "examples" / "softcap.attn", tmp_path)
    source = path.read_text()
    marker = "    sizes, params = _bind(Q_, K_, V_, overrides)"
    start = source.index("def _triton_forward")
    at = source.index(marker, start)
    broken = tmp_path / "raising.py"
    broken.write_text(source[:at] + "    raise RuntimeError('boom')\n" + source[at:])
    module = import_file(broken, "raising")
    lines = []
    cascade = einsumattn.load(ROOT / "examples" / "softcap.attn")
    assert not run_check(cascade, module, ("triton",), examples=3, report=lines.append)
    assert any("ERROR raised RuntimeError: boom" in line and "sizes " in line
               for line in lines), lines
    assert "smallest failing case:" in lines


@settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=cascades())
def test_triton_backend_agrees_on_random_cascades(tmp_path_factory, spec):
    # Triton reads kernel source from the file, so the module is written out first.
    folder = tmp_path_factory.mktemp("random")
    module = import_file(compile_to_file(spec.text, folder), f"random_{folder.name}")
    assert module.TRITON_FALLBACK is None
    cascade = einsumattn.load(spec.text)
    cls = getattr(module, module.__all__[0])
    for size, contiguous in ((1, True), (3, False)):
        sizes = {r: size + i % 2 for i, r in enumerate(cascade.ranks)
                 if cascade.ranks[r].fixed is None and cascade.ranks[r].split_of is None}
        inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, contiguous, 0))
        if not well_conditioned(cascade, inputs, "float32"):
            # float32 arithmetic cannot reach the exact result here (the sign of a sum
            # that cancels to rounding noise: tests/test_verify.py), so a mismatch says
            # nothing about the kernels; `einsumattn check` skips such cases too
            continue
        for backend in ("triton", "triton-unfused"):   # fused where it applies, and not
            results = compare(cascade, inputs, cls(backend=backend)(*inputs.values()),
                              "float32")
            assert all(r.ok for r in results), (backend, spec.text,
                                                [r.describe() for r in results])



def test_triton_keeps_a_point_absent_when_its_sum_is_empty(tmp_path):
    """The thorough profile's case, shrunk: T3[0] is absent (T2[p - P // 2] is out of
    range at p = 0) while every term of its sum over f is out of range (F = 2); the
    Triton kernels compute the derived cascade, whose factoring once made T3[0] a
    present 0 (see test_rewrites.py)."""
    spec = """attention absent_factor

dims  B, P, M, F
input X1[p], X2[m, b, p, f]

T1[f] = X2[m, b, p, f] where not (p + p != P)
T2[p] = T1[f] / (1 + abs(max(where(f == p, X1[p], -X1[p]), X1[p])))
T3[p] = T2[p - P // 2] / (1 + abs(min(T1[f + 2], X1[P - 1 - p])))
T5[p] = T3[p] - (exp(tanh(T1[f // 2])) - T3[p])

output T5
"""
    module = import_file(compile_to_file(spec, tmp_path), "absent_factor")
    cascade = einsumattn.load(spec)
    inputs = case_inputs(cascade, Case({"B": 1, "P": 2, "M": 1, "F": 2}, "float32", 1.0,
                                       True, 0))
    for backend in ("triton", "triton-unfused"):
        out = module.AbsentFactor(backend=backend)(*inputs.values())
        results = compare(cascade, inputs, out, "float32")
        assert all(r.ok for r in results), (backend, [r.describe() for r in results])

@pytest.mark.parametrize("backend, masked, unmasked", [
    # The unfused schedule carries the causal mask to later kernels through QK__ok.
    ("triton-unfused", "((m_ <= p_) & live).to(tl.int8)", "(live).to(tl.int8)"),
    # The fused kernel applies it to each score tile (inside the diagonal tile too).
    ("triton", "QK__ok = lanes & (m_[None, :] <= p_[:, None])", "QK__ok = lanes"),
])
def test_check_catches_a_triton_kernel_without_its_mask(tmp_path, backend, masked, unmasked):
    cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    source = generate(cascade, rewrite=False)
    assert masked in source
    path = tmp_path / f"unmasked_{backend.replace('-', '_')}.py"
    path.write_text(source.replace(masked, unmasked))
    module = import_file(path, path.stem)
    assert not run_check(cascade, module, (backend,), examples=10, report=lambda _: None,
                         shrink=False)


FUSED = ["softmax_3pass", "causal_softmax", "sliding_window_sinks", "alibi", "softcap", "gqa",
         "sigmoid_attention"]   # softmax_1pass fuses too: its own test below


@pytest.mark.parametrize("name", FUSED)
def test_attention_family_gets_one_fused_kernel(name, built_own):
    module = import_file(built_own[name], f"fused_{name}")
    (kernel,) = module.SCHEDULE["kernels"]
    assert kernel["name"] == f"{name}__fused" and kernel["form"] == "attention"
    assert kernel["uses_dot"] and "triton: one fused kernel" in module.__doc__
    passes = einsumattn.analyze(ROOT / "examples" / f"{name}.attn").passes["M"]
    # One loop over key tiles a pass.
    assert [loop["kind"] for loop in kernel["loops"]] == ["key tiles"] * passes
    assert [p["number"] for p in kernel["passes"]] == list(range(1, passes + 1))


def test_fused_kernel_of_three_passes_recomputes_instead_of_buffering(built_own):
    module = import_file(built_own["softmax_3pass"], "recompute")
    (kernel,) = module.SCHEDULE["kernels"]
    # The score tile is computed again in each pass, for what that pass accumulates.
    assert [(p["accumulates"], p["recomputes"]) for p in kernel["passes"]] == \
        [(("GM",), ("QK",)), (("SD",), ("QK", "SN")), (("AV",), ("QK", "SN", "A"))]
    assert kernel["tensors"]["QK"]["role"] == "stream-dot"
    # No M-sized buffer: only the output goes to memory.
    assert kernel["outputs"] == ("AV",) and kernel["inputs"] == ("Q", "K", "V")


@pytest.mark.parametrize("rewrite", [True, False], ids=["derived", "own"])
def test_causal_and_window_kernels_skip_masked_tiles(rewrite):
    """Both the kernel `compile` builds by default (the derived one-pass cascade, a split
    loop) and the spec's own schedule (--no-rewrite) bound their key loops."""
    from einsumattn.backends.triton_fused import fuse
    from einsumattn.backends.module import Plan

    def kernel(spec):
        return fuse(Plan(einsumattn.load(spec), rewrite=rewrite).kernel)
    def sides(kernel):       # per pass, which bounds its key loop has
        return [{bound.side for bound in p.bounds} for p in kernel.schedule.passes]
    causal = kernel(ROOT / "examples" / "causal_softmax.attn")
    assert sides(causal) == [{"upper"}] * len(causal.schedule.passes)
    window = kernel(WINDOW)
    assert sides(window) == [{"lower", "upper"}] * len(window.schedule.passes)
    unmasked = kernel(ROOT / "examples" / "softmax_3pass.attn")
    assert sides(unmasked) == [set()] * len(unmasked.schedule.passes)
    if rewrite:
        assert "proved" in causal.schedule.skipping


def _visited_tiles(module, pid: int, interior: bool = False, **values) -> range:
    """The key tiles program `pid` of a split kernel visits: its loops' range expressions,
    evaluated (tl.minimum/maximum as min/max; every operand there is >= 0, so Triton's
    truncating // is Python's //), which follow each other (`interior`: the loop without
    masks alone)."""
    text = open(module.__file__).read()
    kernel = text[text.index("__fused("):]
    kernel = kernel[:kernel.find("@triton.jit")]     # the fused kernel alone (split-KV's follow)
    loops = []
    for bounds in re.findall(r"for m1_ in range\((.*)\):", kernel):
        bounds = bounds.replace("tl.minimum", "min").replace("tl.maximum", "max").replace(
            "tl.program_id(0)", str(pid))
        loops.append(range(*eval(f"({bounds})", {}, values)))
    for before, after in zip(loops, loops[1:]):
        assert before.stop == after.start, loops
    if interior:
        # the loop whose comment (the last before it: its carried pointers' starts may
        # stand between) says it has no masks
        notes = [re.findall(r"#.*", before)[-1] for before in
                 re.split(r"\n\s*for m1_ in range.*", kernel)[:len(loops)]]
        (unmasked,) = [loop for loop, note in zip(loops, notes) if "no masks" in note]
        return unmasked
    return range(loops[0].start, loops[-1].stop)


def test_default_causal_and_window_kernels_visit_only_needed_tiles(tmp_path):
    """Counting visited tiles per row tile (tile 16 keys, 16 rows, 53 of each): causal
    stops at the diagonal tile; a window of 20 also starts at the tile of p - 19."""
    causal = import_file(compile_to_file(ROOT / "examples" / "causal_softmax.attn", tmp_path,
                                         tile=16), "visits_causal")
    window = import_file(compile_to_file(WINDOW, tmp_path, tile=16), "visits_window")
    sizes = dict(M_=53, M1_=4, m0__BLOCK=16, p__BLOCK=16)
    for pid in range(4):
        assert _visited_tiles(causal, pid, **sizes) == range(0, pid + 1)
        # Every key of tiles 0..pid-1 is seen by every row of the tile: no masks there.
        assert _visited_tiles(causal, pid, interior=True, **sizes) == range(0, pid)
        first_key = max(0, 16 * pid - 19)
        assert _visited_tiles(window, pid, lower_offset=-19, **sizes) == \
            range(first_key // 16, pid + 1)
        # The window's rows 16 pid .. 16 pid + 15 all see keys 16 pid - 4 .. 16 pid: no
        # whole tile for pid > 0, the first one for pid 0.
        assert len(_visited_tiles(window, pid, interior=True, lower_offset=-19, **sizes)) \
            == 0
    assert "W_, _outwards(1 - W_, \"floor\")," in open(window.__file__).read()   # lower_offset = 1 - W
    own = import_file(compile_to_file(ROOT / "examples" / "softmax_1pass.attn", tmp_path),
                      "visits_flash")
    # Nothing masked: every tile; the full ones (3 of 16 keys in 53) without masks.
    assert _visited_tiles(own, 0, M_=53, M1_=4, m0__BLOCK=16) == range(0, 4)
    assert _visited_tiles(own, 0, True, M_=53, M1_=4, m0__BLOCK=16) == range(0, 3)


@pytest.mark.parametrize("window", [1, 5, 20, 70])
def test_pruned_window_kernel_agrees_across_many_tiles(tmp_path, window):
    cascade = einsumattn.load(WINDOW)
    module = import_file(compile_to_file(WINDOW, tmp_path, tile=16), f"window_{window}")
    assert "tl.maximum(0, tl.program_id(0) * p__BLOCK + (lower_offset)) // m0__BLOCK" in \
        open(module.__file__).read()
    sizes = dict(B=1, H=2, P=53, M=53, E=8, F=8)       # 4 row tiles, 4 key tiles of 16
    for dtype in ("float32", "bfloat16"):
        inputs = case_inputs(cascade, Case(sizes, dtype, 1.0, True, window))
        out = module.SlidingWindow(backend="triton", W=window)(*inputs.values())
        results = compare(cascade, inputs, out, dtype, params={"W": window},
                          rounding=dot_rounding(cascade, module))
        assert all(r.ok for r in results), [r.describe() for r in results]


def test_a_masked_step_that_is_not_an_identity_is_not_skipped():
    """FuseMax's Cascade 5 under a causal mask: exp(RM - RM') is NaN for a row that has
    seen no key yet, so skipping masked tiles would change its result; the loop keeps
    every tile and the facts say why."""
    from einsumattn.backends.triton_fused import fuse
    text = (ROOT / "examples" / "softmax_1pass.attn").read_text()
    causal = einsumattn.load(text.replace("* scale\n", "* scale  where m1 * M0 + m0 <= p\n", 1))
    kernel = fuse(causal)
    assert [p.bounds for p in kernel.schedule.passes] == [()]
    assert "from 0 to nan (initial state)" in kernel.schedule.skipping


def test_kernel_indices_are_int64(built):
    """Index times stride may pass 2**31 elements: every index a kernel builds is int64."""
    for name in ("causal_softmax", "gla_recurrent", "eca"):
        text = open(import_file(built[name], f"int64_{name}").__file__).read()
        assert "tl.program_id(0).to(tl.int64)" in text
        for line in text.splitlines():
            if any(f"tl.arange(0, {block})" in line
                   for block in ("m__BLOCK", "m0__BLOCK", "RBLOCK")):
                assert ".to(tl.int64)" in line, line


def test_one_pass_spec_becomes_a_flash_attention_kernel(built):
    """FuseMax's Cascade 5 as written compiles to FlashAttention's loop: one pass over
    key tiles (the split's tile), the running max and sums carried in registers, the
    division after the loop, nothing written to memory but the output."""
    module = import_file(built["softmax_1pass"], "flash")
    (kernel,) = module.SCHEDULE["kernels"]
    assert [(loop["var"], loop["kind"]) for loop in kernel["loops"]] == \
        [("m1", "split steps")]
    assert kernel["passes"][0]["bounds"] == ()         # no mask: every tile
    roles = {name: t["role"] for name, t in kernel["tensors"].items()}
    assert {n for n, role in roles.items() if role == "carried"} == {"RM", "RD", "RNV"}
    assert roles["PRM"] == "tile-row" and roles["AV"] == "row"   # the division after it
    assert kernel["outputs"] == ("AV",)
    cascade = einsumattn.load(ROOT / "examples" / "softmax_1pass.attn")
    reports = []
    assert run_check(cascade, module, ("triton",), examples=8, report=reports.append), \
        "\n".join(reports)


def test_fusemax_cascade5_as_written_is_one_fused_kernel(tmp_path):
    """FuseMax's Cascade 5 as the paper writes it: K and V copied into chunks
    (BK[e, m1, m0] = K[e, m1*M0 + m0]: Einsums without the query rank, which left no
    rank to spread programs over) and chunks of 4 keys (below tl.dot's 16). The copies
    are read in place (canonical step 8) and the split runs on a padded tile: one
    kernel, FlashAttention's loop, as for softmax_1pass."""
    path = ROOT / "tests" / "fusemax" / "cascade5.attn"
    module = import_file(compile_to_file(path, tmp_path), "fusemax5")
    (kernel,) = module.SCHEDULE["kernels"]
    assert [(loop["var"], loop["kind"]) for loop in kernel["loops"]] == \
        [("m1", "split steps")]
    assert kernel["knobs"]["m0__BLOCK"]["default"] == 16
    assert {n for n, t in kernel["tensors"].items() if t["role"] == "carried"} == \
        {"RM", "RD", "RNV"}
    reports = []
    assert run_check(einsumattn.load(path), module, ("triton",), examples=4,
                     report=reports.append), "\n".join(reports)


def test_not_is_printed_as_its_own_comparison(tmp_path):
    # `not (p < 1)` once printed as `(p < 1 == 0)`: a chained comparison in Python.
    text = "attention negated\ndims P\ninput X[p]\nY[p] = X[p] where not (p < 1)\noutput Y\n"
    module = import_file(compile_to_file(text, tmp_path), "negated")
    x = torch.tensor([1.0, 2.0, 3.0])
    for backend in ("torch", "triton-unfused"):
        torch.testing.assert_close(module.Negated(backend=backend)(x),
                                   torch.tensor([0.0, 2.0, 3.0]))


def test_fused_output_absent_on_its_own_row_is_stored_as_zero(tmp_path):
    # AV reads the next head's values: for the last head every term is out of range on a
    # condition of the head alone, so that head's output is absent (0), in the fused kernel too.
    text = (ROOT / "examples" / "softmax_3pass.attn").read_text().replace(
        "A[b, h, p, m] * V[b, h, m, f]", "A[b, h, p, m] * V[b, h + 1, m, f]").replace(
        "attention softmax_3pass", "attention next_head")
    cascade = einsumattn.load(text)
    module = import_file(compile_to_file(text, tmp_path), "next_head")
    assert "def next_head__fused(" in open(module.__file__).read()
    inputs = case_inputs(cascade, Case(dict(B=1, H=3, P=5, M=7, E=4, F=4), "float32", 1.0,
                                       True, 0))
    out = module.NextHead(backend="triton")(*inputs.values())
    assert bool((out[:, -1] == 0).all()) and bool((out[:, :-1] != 0).any())
    assert all(r.ok for r in compare(cascade, inputs, out, "float32"))


@pytest.mark.parametrize("keys", [16, 17, 40])        # one, two (one padded), three tiles
@pytest.mark.parametrize("backend", ["torch", "triton", "triton-unfused"])
def test_split_cascade_over_several_key_tiles(built, keys, backend):
    """The recurrences of the 1-pass cascade carry over several steps only when M > 16:
    a size the random draws can miss, so it is pinned here."""
    cascade = einsumattn.load(ROOT / "examples" / "softmax_1pass.attn")
    module = import_file(built["softmax_1pass"], f"tiles_{keys}_{backend.replace('-', '_')}")
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=3, M=keys, E=4, F=3), "float32",
                                       10.0, False, keys))
    out = module.Softmax1pass(backend=backend)(*inputs.values())
    assert all(r.ok for r in compare(cascade, inputs, out, "float32"))


def test_cache_key_follows_the_generator():
    from einsumattn.codegen.compile import cache_key, generator_fingerprint
    assert len(generator_fingerprint()) == 64
    generator_fingerprint.cache_clear()
    from einsumattn.backends.module import Options
    from einsumattn.diagnostics import Source
    before = cache_key(Source("spec"), Options())
    import unittest.mock
    with unittest.mock.patch("einsumattn.codegen.compile.generator_fingerprint",
                             return_value="another generator"):
        assert cache_key(Source("spec"), Options()) != before


@pytest.mark.parametrize("backend", ["torch", "triton", "triton-unfused"])
def test_fully_masked_rows_are_zero_in_every_backend(tmp_path, backend):
    """`m < p` leaves query 0 without any key: max is -inf, exp(-inf - -inf) is NaN in
    the arithmetic, and the row must still come out as exactly 0 (LANGUAGE.md)."""
    text = (ROOT / "examples" / "causal_softmax.attn").read_text().replace(
        "where m <= p", "where m < p").replace("attention causal_softmax",
                                               "attention strictly_causal")
    cascade = einsumattn.load(text)
    module = import_file(compile_to_file(text, tmp_path), f"strict_{backend.replace('-', '_')}")
    inputs = case_inputs(cascade, Case(dict(B=1, H=2, P=20, M=20, E=4, F=3), "float32",
                                       1.0, True, 3))
    out = module.StrictlyCausal(backend=backend)(*inputs.values())
    assert not torch.isnan(out).any()
    assert bool((out[:, :, 0] == 0).all())
    assert all(r.ok for r in compare(cascade, inputs, out, "float32"))


def test_a_module_runs_on_torch_alone(built):
    """No einsumattn and no triton: the module imports and its torch backend runs."""
    script = "\n".join([
        "import importlib.util, sys, torch",
        "sys.modules['einsumattn'] = None; sys.modules['triton'] = None",
        "spec = importlib.util.spec_from_file_location('m', sys.argv[1])",
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)",
        "assert module.triton is None",
        "q = torch.randn(1, 2, 5, 4)",
        "print(tuple(module.CausalSoftmax(backend='torch')(q, q, q).shape))",
    ])
    result = subprocess.run([sys.executable, "-c", script, str(built["causal_softmax"])],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 2, 5, 4)"


def test_linear_attention_is_cut_into_two_fused_kernels(built):
    """KV and KS reduce the keys for every (b, h, e); NUM needs all of e for each query
    tile: the value crosses program tiles, so the cascade is cut there, and says why."""
    module = import_file(built["linear_attention"], "cut_linear")
    assert "triton: 2 fused kernels, cut because NUM does not have every parallel rank" \
           in module.__doc__
    stage1, stage2 = module.SCHEDULE["kernels"]
    assert (stage1["name"], stage2["name"]) == ("linear_attention__stage1_fused",
                                                "linear_attention__stage2_fused")
    assert module.SCHEDULE["cut"].startswith("NUM does not have every parallel rank")
    assert stage1["tensors"]["KV"]["role"] == "dot-accumulate"   # per e tile, a tl.dot
    assert stage1["outputs"] == ("KV", "KS") and stage2["inputs"] == ("Q", "KV", "KS")
    cascade = einsumattn.load(ROOT / "examples" / "linear_attention.attn")
    reports = []
    assert run_check(cascade, module, ("triton",), examples=8, report=reports.append), \
        "\n".join(reports)


def test_broadcast_inputs_are_stride_zero_views_and_agree(built):
    """Case.broadcast gives inputs that share one slice along their first rank (stride
    0, as `k[:1].expand(...)`); both Triton schedules read them right."""
    cascade = einsumattn.load(ROOT / "examples" / "causal_softmax.attn")
    case = Case({"B": 3, "H": 2, "P": 5, "M": 7, "E": 4, "F": 3}, "float32", 1.0, True, 0,
                broadcast=True)
    inputs = case_inputs(cascade, case)
    assert all(t.stride(0) == 0 for t in inputs.values())
    assert "broadcast over the first rank" in case.describe()
    module = import_file(built["causal_softmax"], "broadcast_causal")
    for backend in ("triton", "triton-unfused"):
        out = module.CausalSoftmax(backend=backend)(*inputs.values())
        assert all(r.ok for r in compare(cascade, inputs, out, "float32")), backend


@pytest.mark.parametrize("split", ["", "split M -> M1, M0 by 4\n"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_declared_rank_nothing_uses_needs_no_size(backend, split):
    """`dims P, M, E` with M used nowhere: no input binds M, so the module must not ask
    for its size (it raised KeyError: 'M'); a split of it is skipped likewise."""
    text = ("attention unused_rank\ndims P, M, E\ninput Q[p, e]\n" + split +
            "Y[p] = sum[e] Q[p, e]\noutput Y\n")
    module = einsumattn.compile(text, backend=backend)
    q = torch.randn(3, 4, dtype=torch.float32)
    torch.testing.assert_close(module.compiled(q), q.sum(1))


@pytest.mark.parametrize("condition", ["S > 0", "P > 2", "scale > 0.5 and S > 0",
                                       "not (S > 0) or P == 1"])
def test_a_filter_with_one_value_for_every_point(tmp_path, condition):
    """A filter that reads no index variable (a scalar input, a size, a param) is one
    boolean for every lane: the unfused kernel's `lanes & (S > 0.0)` raised in Triton's
    interpreter (which `check` runs on the CPU)."""
    text = (f"attention scalar_filter\ndims P, M\ninput A[p, m], S\nparam scale = 1\n"
            f"O[p] = A[p, m] * scale where {condition}\noutput O\n")
    cascade = einsumattn.load(text)
    module = import_file(compile_to_file(cascade, tmp_path), "scalar_filter_module")
    reports = []
    assert run_check(cascade, module, ("torch", "triton", "triton-unfused"), examples=8,
                     report=reports.append), "\n".join(reports)


@pytest.mark.parametrize("name", ["causal_softmax", "softmax_3pass", "alibi", "softcap"])
def test_kernels_with_interior_tiles_agree_across_many_tiles(tmp_path, name):
    """Key tiles of 16 and row tiles of 16 over 70 keys and rows: every program runs
    interior steps without masks (schedule/interior.py), then the diagonal and the last
    partial tile with them; the oracle decides."""
    cascade = einsumattn.load(ROOT / "examples" / f"{name}.attn")
    module = import_file(compile_to_file(ROOT / "examples" / f"{name}.attn", tmp_path,
                                         tile=16), f"interior_{name}")
    assert "no masks" in open(module.__file__).read()
    sizes = dict(B=1, H=2, P=70, M=70, E=8, F=8)
    layer = getattr(module, module.__all__[0])
    for dtype in ("float32", "bfloat16"):
        inputs = case_inputs(cascade, Case(sizes, dtype, 1.0, False, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = layer(backend="triton")(*inputs.values())
        results = compare(cascade, inputs, out, dtype, rounding=dot_rounding(cascade, module))
        assert all(r.ok for r in results), [r.describe() for r in results]


def test_a_read_condition_on_the_batch_rank_alone_masks_a_tile(tmp_path):
    """Found by the randomized profile (tests/spec_generator.py): X1[b + 1, m] is read
    under conditions on b only, which the fused kernel holds as one program's scalar: joined
    to the lanes it must stay a boolean block (triton_printer.scalar_condition)."""
    text = ("attention batch_read\ndims B, P, M\ninput X0[p, m], X1[b, m]\n"
            "T1[b, p] = min[m] exp(tanh(X1[b + 1, m])) * tanh(X1[b, m]) - 1 "
            "where (b <= b) and (b <= b)\nT2[p] = sum[m] X0[p, m]\noutput T1, T2\n")
    module = import_file(compile_to_file(text, tmp_path), "batch_read")
    reports = []
    run_check(einsumattn.load(text), module, ("triton",), examples=1,
              report=reports.append, shrink=False)
    assert not any("mask has unsupported dtype" in line for line in reports), reports
