"""Compile speed by construction (docs/compile-speed.md): what `import einsumattn` loads,
analyses memoized on the cascade, and proofs that try cheap forms before sympy's
`simplify`. No test here times anything: benchmarks/compile_time.py measures."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import sympy

import einsumattn
from einsumattn.analysis import analyze
from einsumattn.analysis.buffers import _buffers, analyse_buffers
from einsumattn.analysis.formulas import ratio
from einsumattn.analysis.passes import analyse_passes, analyse_rank, analysed_ranks
from einsumattn.analysis.presence import (_absent_tensors, _einsum_conditions,
                                          absent_tensors, einsum_conditions)
from einsumattn.ir.intervals import provably_positive
from einsumattn.loader import load

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "examples").glob("*.attn")) + \
    sorted((ROOT / "benchmarks" / "specs").glob("*.attn"))
HEAVY = ("sympy", "networkx", "torch", "lark", "jinja2", "numpy", "triton")


def _loaded_after(code: str, modules: tuple[str, ...] = HEAVY) -> list[str]:
    """Which of `modules` (the heavy ones by default) a fresh interpreter has loaded
    after running `code`."""
    probe = (f"{code}\nimport sys\n"
             f"print(' '.join(m for m in {modules!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    return done.stdout.split()


def test_import_loads_no_heavy_dependency():
    assert _loaded_after("import einsumattn") == []


def test_help_loads_no_heavy_dependency():
    code = ("import contextlib, io\nfrom einsumattn.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    assert _loaded_after(code) == []


def test_public_names_are_the_functions():
    from einsumattn.codegen import compile as compile_function
    from einsumattn.evaluate import evaluate
    from einsumattn.ir import Cascade

    assert einsumattn.load is load and einsumattn.analyze is analyze
    assert einsumattn.compile is compile_function and einsumattn.Cascade is Cascade
    # The submodule einsumattn.evaluate is loaded by now (this file imports it): the
    # package attribute of that name is still the function.
    assert einsumattn.evaluate is evaluate
    assert {"load", "evaluate", "analyze", "compile", "SpecError"} <= set(dir(einsumattn))
    with pytest.raises(AttributeError):
        einsumattn.no_such_name


def test_evaluate_is_the_function_whichever_is_imported_first():
    code = ("import einsumattn.evaluate, einsumattn\n"
            "assert callable(einsumattn.evaluate), einsumattn.evaluate\n"
            "from einsumattn import evaluate\nassert callable(evaluate)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.fixture(scope="module", params=SPECS, ids=lambda p: p.stem)
def cascade(request):
    return load(request.param)


def test_cascade_is_frozen(cascade):
    with pytest.raises(dataclasses.FrozenInstanceError):
        cascade.name = "other"


def test_memoized_analyses_equal_fresh_ones(cascade):
    ranks = analysed_ranks(cascade)
    assert analyse_passes(cascade) == {r: analyse_rank.uncached(cascade, r) for r in ranks}
    assert absent_tensors(cascade) == set(_absent_tensors.uncached(cascade))
    absent = absent_tensors(cascade)
    for einsum in cascade.einsums:
        assert einsum_conditions(cascade, einsum, absent) == \
            list(_einsum_conditions.uncached(cascade, einsum, frozenset(absent), None))
    for rank, info in analyse_passes(cascade).items():
        assert analyse_buffers(cascade, info, 2) == _buffers(cascade, info, 2)


def test_memo_is_per_cascade_object(cascade):
    rank = analysed_ranks(cascade)[0]
    first = analyse_rank(cascade, rank)
    assert analyse_rank(cascade, rank) is first            # asked again: the same result
    copy = dataclasses.replace(cascade)                    # a new cascade starts empty
    assert not copy._memo
    assert analyse_rank(copy, rank) == first and analyse_rank(copy, rank) is not first


def test_shared_results_come_in_fresh_containers(cascade):
    """Callers may change the list, set or dict they get without changing the memo."""
    absent = absent_tensors(cascade)
    absent.add("not a tensor")
    assert "not a tensor" not in absent_tensors(cascade)
    passes = analyse_passes(cascade)
    passes.clear()
    assert analyse_passes(cascade)
    conditions = einsum_conditions(cascade, cascade.einsums[0], set())
    conditions.append(None)
    assert None not in einsum_conditions(cascade, cascade.einsums[0], set())


def test_report_is_new_per_call_and_intensity_is_unchanged(cascade):
    first, second = analyze(cascade), analyze(cascade)
    assert first is not second and first.to_text() == second.to_text()
    cost = first.cost
    expected = ratio(cost.flops, cost.bytes) if cost.bytes != 0 else sympy.oo
    assert cost.intensity == expected
    assert first.to_text() == first.passes_text() + "\n\n" + first.cost_text()


def test_provably_positive_tries_cheap_forms_first(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sympy.simplify called")

    monkeypatch.setattr(sympy, "simplify", refuse)
    m, h, kh = (sympy.Symbol(n, positive=True, integer=True) for n in ("M", "H", "KH"))
    assert provably_positive(m - (m - 1))
    assert provably_positive(kh - (h - 1) * kh / h)                  # GQA's kv head
    assert not provably_positive(m - 64 * sympy.ceiling(m / 64) + 1)  # split: false at 65
    assert not provably_positive(m - 2)                                 # false at 1


def test_provably_positive_still_asks_simplify_when_cheap_forms_do_not_decide():
    x = sympy.Symbol("X", positive=True, integer=True)
    # Positive at every sample and for every size, but not as an expanded polynomial.
    assert provably_positive(sympy.cos(x) ** 2 + sympy.sin(x) ** 2)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_generating_never_calls_simplify(monkeypatch, path):
    """No example or paper spec needs sympy.simplify to compile: the proofs and bounds
    are settled by expanded forms and refuted at sample points (transform/algebra.py).
    Its first call costs 0.2 s (it imports sympy.physics)."""
    from einsumattn.backends.module import generate

    cascade = load(path)
    calls = []
    original = sympy.simplify

    def counted(value, *args, **kwargs):
        calls.append(value)
        return original(value, *args, **kwargs)

    monkeypatch.setattr(sympy, "simplify", counted)
    generate(cascade, rewrite=True, module_name=cascade.name)
    # sympy.simplify returns at once on an atom (0 or nan); anything else is the
    # costly call.
    assert [value for value in calls if sympy.sympify(value).args] == []

def test_compiling_needs_no_numpy():
    code = ("from einsumattn.loader import load\n"
            "from einsumattn.backends.module import generate\n"
            "cascade = load('examples/causal_softmax.attn')\n"
            "generate(cascade, rewrite=True, module_name=cascade.name)")
    assert "numpy" not in _loaded_after(code)


def test_the_compile_command_loads_only_what_it_uses(tmp_path):
    """difflib is for 'did you mean' hints on a spec with an error."""
    code = ("import contextlib, io\nfrom einsumattn.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    main(['compile', 'examples/causal_softmax.attn', '-o', {str(tmp_path)!r}])")
    assert _loaded_after(code, ("difflib",)) == []


def test_the_compile_command_finds_its_files_without_importlib_resources(tmp_path):
    """The grammar and the template are read by path (as the parser tables are):
    importlib.resources imports zipfile and its readers. `python -S`, because this
    machine's site-packages loads it at start-up."""
    import sysconfig

    code = (f"import sys\nsys.path.append({sysconfig.get_paths()['purelib']!r})\n"
            "import contextlib, io\nfrom einsumattn.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    main(['compile', 'examples/causal_softmax.attn', '-o', {str(tmp_path)!r}])\n"
            "print(' '.join(m for m in ('importlib.resources', 'zipfile') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True,
                          text=True, cwd=ROOT, check=True)
    assert done.stdout.split() == []


def test_syntax_tree_classes_have_docstrings():
    """dataclasses builds a missing docstring from inspect.signature when the class is
    created, at import (about 0.1 ms a class): the parser's node classes say what they
    are instead."""
    import dataclasses

    from einsumattn.frontend import ast

    nodes = [value for value in vars(ast).values()
             if isinstance(value, type) and dataclasses.is_dataclass(value)]
    assert len(nodes) > 20
    assert [n.__name__ for n in nodes if n.__doc__.startswith(n.__name__ + "(")] == []


def test_operation_tables_are_built_on_first_use():
    from einsumattn.ir import semantics

    assert semantics.apply("+", [1.0, 2.0]) == 3.0
    assert semantics.UNARY["exp"] is semantics.UNARY["exp"] and "//" in semantics.BINARY
    with pytest.raises(AttributeError):
        semantics.NO_SUCH_TABLE


def test_buffer_formulas_are_derived_when_read(cascade):
    for rank, info in analyse_passes(cascade).items():
        buffers = _buffers(cascade, info, 2)
        assert buffers.parallel is not None and "_footprints" not in buffers.__dict__
        state = buffers.onchip_state                     # now derived, once
        assert "_footprints" in buffers.__dict__ and buffers.onchip_state is state


def _sizes(*names):
    return [sympy.Symbol(n, positive=True, integer=True) for n in names]


def test_maximum_is_sympy_max():
    from einsumattn.analysis.formulas import maximum

    e, f, m, p, p0 = _sizes("E", "F", "M", "P", "P0")
    cases = [(e * p0 + m, f * p0 + m),                       # incomparable: both kept
             (e * p0 + m, f * p0 + m, p0 * (m + 2)),
             (p0 * (e * m + e * p + 4 * m + 4 * p + 2),     # comparable: the first wins
              p0 * (e * m + e * p + 3 * m + 2 * p + 3)),
             (e, e), (e,), (e, sympy.Integer(3)), (sympy.Max(e, f), m)]
    for args in cases:
        assert maximum(*args) == sympy.Max(*args)
        assert str(maximum(*args)) == str(sympy.Max(*args))


def test_maximum_skips_the_proofs_of_incomparable_formulas(monkeypatch):
    from einsumattn.analysis import formulas

    e, f, m, p0 = _sizes("E", "F", "M", "P0")
    expected = sympy.Max(e * p0 + m, f * p0 + m)

    def refuse(*args, **kwargs):
        raise AssertionError("pairwise proofs attempted")

    monkeypatch.setattr(sympy.Max, "_is_connected", classmethod(refuse))
    assert formulas.maximum(e * p0 + m, f * p0 + m) == expected


def test_rewrite_is_derived_once_per_cascade(cascade):
    from einsumattn.transform import rewrite

    first, second = rewrite(cascade, tile=16), rewrite(cascade, tile=16)
    assert second.cascade is first.cascade            # derived once: the same objects
    assert second.steps == first.steps and second.steps is not first.steps
    first.steps.clear()
    assert rewrite(cascade, tile=16).steps == second.steps
    if second.steps:                                    # another tile, another derivation
        assert rewrite(cascade, tile=32).cascade is not second.cascade


def test_compiling_computes_no_cost():
    from einsumattn.backends.module import generate

    cascade = load(ROOT / "examples" / "softmax_3pass.attn")
    generate(cascade, rewrite=True, module_name=cascade.name)
    cost = analyze(cascade).cost                  # the memoized analysis compile used
    assert not {"einsums", "total", "flops", "bytes", "intensity"} & set(vars(cost))
    assert cost.flops != 0 and "flops" in vars(cost)    # computed when read


def test_buffer_formulas_equal_those_of_sympy_max(cascade, monkeypatch):
    from einsumattn.analysis import buffers as module

    def states():
        return {rank: str(_buffers(cascade, info, 2).onchip_state)
                for rank, info in analyse_passes(cascade).items()}

    fast = states()
    monkeypatch.setattr(module, "maximum", sympy.Max)
    assert states() == fast


def test_formula_values_at_sample_sizes():
    from fractions import Fraction

    from einsumattn.ir.intervals import exact_value as _value

    e, m = _sizes("E", "M")
    formula = 3 * e * m / 2 + sympy.ceiling(m / 64) - e ** 2 + sympy.Rational(1, 3)
    sizes = {e: 5, m: 65}
    assert _value(formula, sizes) == Fraction(str(formula.xreplace(
        {e: sympy.Integer(5), m: sympy.Integer(65)})))
    assert _value(sympy.sqrt(e), sizes) is None and _value(e * sympy.pi, sizes) is None



def _tokenized_comments(source: str) -> str:
    """What spec_comments must give: every comment Python's tokenizer finds, through
    spec_text."""
    import io
    import tokenize

    from einsumattn.backends.names import spec_text

    lines = source.splitlines(keepends=True)
    for token in reversed([t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                           if t.type == tokenize.COMMENT]):
        (row, column), line = token.start, lines[token.start[0] - 1]
        lines[row - 1] = line[:column] + spec_text(token.string) + line[column + len(token.string):]
    return "".join(lines)


TRICKY_SOURCES = [
    "x = 1  # the rows of Q_\n",
    'x = "# Q_"\n',                                          # '#' in a string
    'x = "# Q_"  # and K_ here\ny = 2\n',
    '"""a docstring\n# Q_ inside it\n"""\nz = 3  # plain Q_\n',
    "v = Q_  # reads __x0_ and n__N\n",
    "s = 'it\\'s # Q_'  # K_\n",                             # an escaped quote
    "r = r'\\' # Q_'  # V_\n",                               # raw: \' does not end it
    "t = \'\'\'a \'\' # Q_ \'\'\'  # K_\n",          # quotes inside a triple string
    'u = b"#" + rb"\\"" + f"{x!r}#Q_"  # V_ \'\n',
    'w = """\\"""  # Q_ """\n',
    "q = ('#', \"'\", '\"')  # Q_ 'x' \"y\"\n",
    "a = 1 + \\\n    2  # Q_\n",                               # a continued line
    "# Q_ at the start\n\n    # K_ indented\n",
]


@pytest.mark.parametrize("source", TRICKY_SOURCES)
def test_spec_comments_finds_the_comments_the_tokenizer_finds(source):
    from einsumattn.backends.names import spec_comments

    compile(source, "<tricky>", "exec")                      # each is valid Python
    assert spec_comments(source) == _tokenized_comments(source)


def test_spec_comments_of_generated_modules_equal_tokenizing_them(monkeypatch):
    from einsumattn.backends import names
    from einsumattn.backends.module import generate

    printed = []
    restate = names.spec_comments
    monkeypatch.setattr(names, "spec_comments", lambda source: printed.append(source) or
                        restate(source))
    for path in SPECS:
        cascade = load(path)
        generate(cascade, rewrite=True, module_name=cascade.name)
    assert len(printed) == len(SPECS)
    for source in printed:                      # as printed, before comments are restated
        assert restate(source) == _tokenized_comments(source) != source

def test_compiling_loads_no_networkx_and_builds_no_parser_tables():
    """The compile path reads lark's tables from the file shipped beside the grammar
    (frontend/tables.py) and needs no networkx (ir/graph.py)."""
    code = ("import lark\nbuilt = []\noriginal = lark.Lark.__init__\n"
            "lark.Lark.__init__ = lambda self, *a, **k: (built.append(1), "
            "original(self, *a, **k))[1]\n"
            "from einsumattn.loader import load\n"
            "from einsumattn.backends.module import generate\n"
            "cascade = load('examples/causal_softmax.attn')\n"
            "generate(cascade, rewrite=True, module_name=cascade.name)\n"
            "assert not built, 'the LALR tables were built'")
    assert "networkx" not in _loaded_after(code)
