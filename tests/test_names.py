"""Names in generated code (einsumattn/backends/names.py): every name LANGUAGE.md allows
compiles, whatever the generator calls its own things; module names that cannot work
are located errors; text from outside the IR reaches the module only as a valid
literal; and the cache trusts an entry only after verifying it."""

import ast
import builtins
import dataclasses
import inspect
import io
import keyword
import os
import pathlib
import re
import subprocess
import sys
import tokenize

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import einsumattn
from einsumattn.backends import names
from einsumattn.codegen import compile_to_file, generate
from einsumattn.codegen.compile import (cache_dir, cache_key, import_file, sealed, verified,
                                        write_atomically)
from einsumattn.backends.module import Options, Plan
from einsumattn.diagnostics import Source
from einsumattn.frontend import FUNCTIONS, RESERVED
from einsumattn.loader import load_source
from einsumattn.verify import Case, case_inputs, compare

from conftest import ROOT, examples, load_generated


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EINSUMATTN_CACHE_DIR", str(tmp_path / "cache"))


# ---------------------------------------------------------------- specs with any names
# Three shapes of cascade, so that every schedule's names are exercised: attention (the
# fused attention kernel, the derived split cascade, the unfused kernels), pooling and a
# convolution across channels (the loop schedule: flattened tiles, held ranks, a cut),
# and a recurrence (the loop schedule's steps, carried state).
TEMPLATES = {
    "attention": ("""attention {att}
dims {P}, {M}, {E}
input {Q}[{p}, {e}], {K}[{m}, {e}], {V}[{m}, {e}]
param {scale} = 1 / sqrt({E})
{QK}[{p}, {m}] = {Q}[{p}, {e}] * {K}[{m}, {e}] * {scale} where {m} <= {p}
{GM}[{p}] = max[{m}] {QK}[{p}, {m}]
{SN}[{p}, {m}] = exp({QK}[{p}, {m}] - {GM}[{p}])
{SD}[{p}] = sum[{m}] {SN}[{p}, {m}]
{AV}[{p}, {e}] = sum[{m}] {SN}[{p}, {m}] * {V}[{m}, {e}] / {SD}[{p}]
output {AV}
""", ["P", "M", "E"], ["Q", "K", "V", "QK", "GM", "SN", "SD", "AV"], ["scale"],
        {"P": 5, "M": 5, "E": 2}),
    "loops": ("""attention {att}
dims {B}, {C}, {H}, {W}, {K}
input {X}[{b}, {c}, {h}, {w}], {CW}[{k}]
param {gain} = 2
{GAP}[{b}, {c}] = sum[{h}, {w}] {X}[{b}, {c}, {h}, {w}] / ({H} * {W})
{Y}[{b}, {c}] = {CW}[{k}] * {GAP}[{b}, {c} + {k} - {K} // 2]
{S}[{b}, {c}] = sigmoid({Y}[{b}, {c}])
{O}[{b}, {c}, {h}, {w}] = {X}[{b}, {c}, {h}, {w}] * {S}[{b}, {c}] * {gain}
output {O}
""", ["B", "C", "H", "W", "K"], ["X", "CW", "GAP", "Y", "S", "O"], ["gain"],
        {"B": 1, "C": 4, "H": 2, "W": 3, "K": 3}),
    "recurrence": ("""attention {att}
dims {B}, {T}, {D}, {F}
input {Q}[{b}, {t}, {d}], {K}[{b}, {t}, {d}], {V}[{b}, {t}, {f}], {G}[{b}, {t}, {d}]
param {scale} = 1 / sqrt({D})
init {S}[{b}, 0, {d}, {f}] = 0
{S}[{b}, {t}+1, {d}, {f}] = exp({G}[{b}, {t}, {d}]) * {S}[{b}, {t}, {d}, {f}] + {K}[{b}, {t}, {d}] * {V}[{b}, {t}, {f}]
{O}[{b}, {t}, {f}] = {Q}[{b}, {t}, {d}] * {scale} * {S}[{b}, {t}+1, {d}, {f}]
output {O}
""", ["B", "T", "D", "F"], ["Q", "K", "V", "G", "S", "O"], ["scale"],
        {"B": 1, "T": 3, "D": 2, "F": 2}),
}


def _legal(name: str) -> bool:
    """Whether LANGUAGE.md allows `name` (its keywords and functions are reserved)."""
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None and \
        name not in RESERVED and name not in FUNCTIONS


def instantiate(template: str, chosen: dict[str, str], att: str = "named") -> str:
    """The template with slots renamed by `chosen` (others keep their own names)."""
    text, ranks, tensors, params, _ = TEMPLATES[template]
    slots = {slot: chosen.get(slot, slot) for slot in ranks + tensors + params}
    slots.update({rank.lower(): slots[rank].lower() for rank in ranks})
    return text.format(att=att, **slots)


def fill(template: str, pool: list[str]) -> tuple[dict[str, str], list[str]]:
    """Names for as many slots of `template` as the pool gives, in order (a rank takes
    its lower-case index variable too: both must be free, and differ), and what is
    left."""
    _, ranks, tensors, params, _ = TEMPLATES[template]
    chosen, taken, left = {}, set(), []
    slots = ranks + tensors + params
    for name in pool:
        for slot in (s for s in slots if s not in chosen):
            spelled = {name, name.lower()} if slot in ranks else {name}
            # A rank's name must differ from its index variable's, or it reads as the
            # variable where the template uses the size (`sqrt(E)`).
            if all(_legal(n) for n in spelled) and not spelled & taken and \
                    (slot not in ranks or len(spelled) == 2):
                chosen[slot] = name
                taken |= spelled
                break
        else:
            left.append(name)
    # Slots the pool did not fill keep the template's names: those must be free too.
    for slot in slots:
        if slot not in chosen:
            own = {slot, slot.lower()} if slot in ranks else {slot}
            if own & taken:
                chosen[slot] = _fresh(taken, slot)
                taken |= {chosen[slot], chosen[slot].lower()}
            else:
                taken |= own
    return chosen, left


def _fresh(taken: set[str], base: str) -> str:
    number = 2
    while f"{base}{number}" in taken or f"{base}{number}".lower() in taken:
        number += 1
    return f"{base}{number}"


def agrees(template: str, chosen: dict[str, str], folder, tag: str,
           backends=("torch", "triton", "triton-unfused")) -> list[str]:
    """Compile the instantiated template, import it, and compare each backend with the
    oracle; the problems found (empty when all agree)."""
    text = instantiate(template, chosen, att=f"named_{tag}")
    sizes = {chosen.get(r, r): size for r, size in TEMPLATES[template][4].items()}
    try:
        cascade = einsumattn.load(text)
        module = import_file(compile_to_file(text, folder), f"names_{tag}")
        inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, True, 0))
        cls = getattr(module, module.__all__[0])
        problems = []
        for backend in backends:
            results = compare(cascade, inputs, cls(backend=backend)(*inputs.values()),
                              "float32")
            problems += [f"{backend}: {r.describe()}" for r in results if not r.ok]
        return problems
    except Exception as error:  # noqa: BLE001 - reported with the spec below
        return [f"{type(error).__name__}: {str(error)[:300]}"]


def scope_names(tree: ast.AST) -> set[str]:
    """Names a Python module binds or reads in some scope (not attributes, which live
    in other namespaces)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.alias):
            found.add((node.asname or node.name).split(".")[0])
    return found


GENERATED = ["causal_softmax", "softmax_1pass", "eca", "gla_recurrent", "linear_attention"]


@pytest.fixture(scope="module")
def identifiers() -> list[str]:
    """Every identifier of the generated code of several examples (scope names,
    attributes and keyword arguments), the names the old generator reserved, Python's
    keywords and builtins, and spellings next to the generator's derived names."""
    found = set()
    for example in GENERATED:
        tree = ast.parse(generate(einsumattn.load(ROOT / "examples" / f"{example}.attn")))
        found |= scope_names(tree)
        found |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        found |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg}
    # Builtins: the functions and constants (the exception classes are alike: a few).
    found |= set(keyword.kwlist) | set(keyword.softkwlist) | \
        {n for n in dir(builtins) if not n[:1].isupper()} | \
        {"TypeError", "ValueError", "RuntimeError", "Exception", "Ellipsis"}
    found |= {"device", "sizes", "params", "origin", "out_dtype", "overrides", "tuning",
              "dot_dtype", "fused", "lower_offset", "upper_offset", "lanes", "live",
              "row_live", "batch", "rest", "pid", "start", "flat", "rflat", "r0", "term",
              "ok", "step", "DOT_DTYPE", "BLOCK", "RBLOCK", "BLOCK_P", "BLOCK_M",
              "BLOCK__HW", "_HW", "_k_Q", "s_Q_0", "_fused_named"}
    for base in ("Q", "QK", "X", "S", "M", "p"):
        found |= {f"{base}_", f"{base}__", f"{base}_ptr", f"{base}__ptr", f"{base}_ok",
                  f"{base}__ok", f"{base}_ok_ptr", f"{base}_s0", f"{base}__s0",
                  f"{base}__kernel", f"{base}_fused", f"{base}__BLOCK", f"{base}__at",
                  f"{base}__flat", f"_{base}", f"__{base}", f"__{base}_", f"__{base}0_"}
    return sorted(n for n in found if _legal(n))


# ---------------------------------------------------------------- any name compiles
@pytest.mark.slow
def test_every_name_the_generated_code_uses_works_as_a_spec_name(identifiers, tmp_path):
    """Each identifier is a tensor, param, rank or index variable of some spec, and
    each spec compiles, imports and agrees with the oracle on torch and both Triton
    schedules (the templates take turns, so every schedule sees many names)."""
    pool, failures, number = list(identifiers), [], 0
    while pool:
        template = list(TEMPLATES)[number % len(TEMPLATES)]
        chosen, left = fill(template, pool)
        assert len(left) < len(pool)                    # every spec takes some names
        pool, number = left, number + 1
        problems = agrees(template, chosen, tmp_path / str(number), f"pool{number}")
        if problems:
            failures.append((instantiate(template, chosen), problems))
    assert number > 20 and not failures, failures[:3]


@pytest.mark.parametrize("template, chosen", [
    # A tensor Q and a param Q_ptr: once the same kernel argument twice; a tensor Q_ptr.
    ("attention", {"Q": "Q", "scale": "Q_ptr", "K": "K_ok", "V": "K_ptr"}),
    # A param named like the unfused kernels' block size, a rank named like its grid's.
    ("attention", {"scale": "BLOCK", "P": "RBLOCK"}),
    # A tensor named as another's mask, stride and kernel once were.
    ("attention", {"QK": "QK", "GM": "QK_ok", "SN": "s_QK_0", "SD": "_k_QK"}),
    # Python keywords and builtins, the generator's locals and module names.
    ("attention", {"Q": "class", "K": "def", "V": "return", "QK": "lambda", "scale": "self",
                   "GM": "torch", "SN": "tl", "SD": "range", "AV": "None", "E": "Math"}),
    ("loops", {"X": "lanes", "CW": "import", "GAP": "reference", "Y": "TUNING",
               "S": "_bind", "O": "sizes", "gain": "backend", "H": "_HW", "W": "H_W"}),
    ("recurrence", {"S": "S_at", "G": "S__at", "O": "device", "Q": "__debug_",
                    "scale": "__p", "T": "Step", "D": "START"}),
])
def test_names_the_generator_uses_itself_compile_and_agree(tmp_path, template, chosen):
    assert agrees(template, chosen, tmp_path, f"own_{abs(hash(str(chosen)))}") == []


@pytest.mark.parametrize("text, sizes", [
    # A rank named in lower case is its own index variable: the generated code still
    # needs its size apart from the index (`m__N`, `m__n`).
    ((ROOT / "examples" / "causal_softmax.attn").read_text().replace(
        "dims  B, H, P, M, E, F", "dims  B, h, P, m, E, F"),
     {"B": 1, "h": 2, "P": 5, "m": 6, "E": 3, "F": 2}),
    ("attention lower\ndims _, E\ninput X[_, e], Y[_, e]\nZ[_] = X[_, e] * Y[_, e]\n"
     "output Z\n", {"_": 3, "E": 4}),
], ids=["dims h and m", "dims _"])
def test_a_rank_named_in_lower_case_keeps_its_size_and_its_index_apart(tmp_path, text,
                                                                      sizes):
    text = re.sub(r"attention \w+", "attention lower", text)
    cascade = einsumattn.load(text)
    module = import_file(compile_to_file(text, tmp_path), f"lower_{len(sizes)}")
    inputs = case_inputs(cascade, Case(sizes, "float32", 1.0, True, 0))
    for backend in ("torch", "triton", "triton-unfused"):
        out = module.Lower(backend=backend)(*inputs.values())
        assert all(r.ok for r in compare(cascade, inputs, out, "float32")), backend


def test_einsum_subscripts_are_the_spec_letters():
    source = generate(einsumattn.load(ROOT / "examples" / "causal_softmax.attn"))
    assert 'torch.einsum("bhpme,bhpme->bhpm", Q_[:, :, :, None], K_[:, :, None])' in source


SUFFIXES = st.sampled_from(["", "_", "__", "_ptr", "__ptr", "_ok", "__ok", "_s0", "__s0",
                            "__kernel", "_fused", "__BLOCK", "__at", "0_", "_2", "__r"])
BASES = st.sampled_from(["Q", "K", "QK", "p", "m", "S", "_", "__x", "lanes", "torch", "tl",
                         "class", "self", "range", "BLOCK", "device", "reference",
                         "_bind", "sizes", "True", "none"])


@settings(max_examples=examples(12), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(BASES, SUFFIXES).map("".join), min_size=6, max_size=14),
       st.sampled_from(list(TEMPLATES)))
def test_random_names_from_the_generators_vocabulary_compile(tmp_path_factory, drawn,
                                                            template):
    chosen, _ = fill(template, drawn)
    folder = tmp_path_factory.mktemp("drawn")
    assert agrees(template, chosen, folder, f"drawn_{folder.name}",
                  backends=("torch", "triton")) == [], instantiate(template, chosen)


# ---------------------------------------------------------------- the rule, checked
def _kinds(text: str, cascades) -> dict[str, set[str]]:
    """The scope names of generated code, sorted by the namespace rule."""
    spec = set()
    for cascade in cascades:
        spec |= set(cascade.tensors) | set(cascade.params) | set(cascade.ranks) | \
            {r.var for r in cascade.ranks.values()} | {cascade.name}
    kinds = {"spec": set(), "derived": set(), "own": set(), "stray": set()}
    for word in scope_names(ast.parse(text)):
        if word.startswith("__") and word.endswith("__"):
            kinds["own"].add(word)                       # Python's own names
        elif names.is_mangled(word):
            kinds["spec" if names.spec_name(word) in spec else "stray"].add(word)
        elif "__" in word:
            base, tag = word[:word.rindex("__") + 1], word[word.rindex("__") + 2:]
            ok = names.is_mangled(base) and re.fullmatch(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*", tag)
            kinds["derived" if ok else "stray"].add(word)
        else:
            kinds["own"].add(word)
    return kinds


@pytest.mark.parametrize("example", GENERATED + ["softcap", "gqa", "sliding_window_sinks"])
def test_generated_names_fall_into_the_three_namespaces(example):
    """Every scope name of a generated module is a spec name spelled `name_` (and a
    name of the spec or its derived cascade), a derived `name__tag`, or the generator's
    own (no trailing `_`, no `__`): the premise of names.py's argument."""
    cascade = einsumattn.load(ROOT / "examples" / f"{example}.attn")
    kinds = _kinds(generate(cascade), [cascade, Plan(cascade).kernel])
    assert not kinds["stray"]
    assert not any(w.endswith("_") or "__" in w for w in kinds["own"]
                   if not (w.startswith("__") and w.endswith("__")))
    assert {"Q_", "K_"} <= kinds["spec"] or {"X_"} <= kinds["spec"]
    assert kinds["derived"]


@pytest.mark.parametrize("example", ["causal_softmax", "softmax_1pass", "gqa", "eca"])
def test_messages_in_generated_code_say_the_spec_names(example):
    """Strings the generated code shows users (errors, warnings) use the spec's names,
    not their spellings in the code: the split kernels' tile check once said `M0_`."""
    source = generate(einsumattn.load(ROOT / "examples" / f"{example}.attn"))
    strings = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
               if t.type == tokenize.STRING and not t.string.startswith('"""')]
    assert strings
    for string in strings:
        said = re.sub(r"\{[^{}]*\}", "", string)         # f-string fields are code
        assert not [w for w in re.findall(r"(?<![\w])[A-Za-z_]\w*", said)
                    if names.is_mangled(w)], string


def test_wrappers_read_only_their_arguments_and_the_names_they_reserve():
    """The public functions pass their arguments on and read nothing else but
    WRAPPER_NAMES: so any spec name not in that list is a valid argument name."""
    tree = ast.parse(generate(einsumattn.load(ROOT / "examples" / "softcap.attn"),
                              merge=True))
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef) and
                 n.name in ("reference", "softcap", "partial", "finish")]
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Softcap")
    functions += [n for n in cls.body if isinstance(n, ast.FunctionDef) and
                  n.name in ("__init__", "forward")]
    assert len(functions) == 6
    for function in functions:
        own = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
        read = {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}
        assert read - own <= names.WRAPPER_NAMES, (function.name, read - own)


@pytest.mark.parametrize("example", ["softcap", "eca", "gla_recurrent"])
def test_module_level_names_are_listed(example):
    """What a generated module defines at its top level is MODULE_NAMES, its kernels,
    its class and its function: the list the class and function names avoid."""
    cascade = einsumattn.load(ROOT / "examples" / f"{example}.attn")
    tree = ast.parse(generate(cascade, merge=True))   # with the merge's pieces
    top = set()
    for node in _top_level(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom)):
            for target in ast.walk(node):
                if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                    top.add(target.id)
                elif isinstance(target, ast.alias):
                    top.add((target.asname or target.name).split(".")[0])
    kernels = set(Plan(cascade).triton.kernel_names)
    module = types_of(tree)
    assert top - names.MODULE_NAMES - kernels - set(module) == set()


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Top-level statements, looking into `if` and `try` blocks (still module scope)."""
    out, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            stack += node.body + getattr(node, "orelse", []) + \
                [s for h in getattr(node, "handlers", []) for s in h.body]
    return out


def types_of(tree: ast.Module) -> list[str]:
    """The module's class and function (its __all__ without `reference`)."""
    assign = next(n for n in tree.body if isinstance(n, ast.Assign) and
                  getattr(n.targets[0], "id", "") == "__all__")
    return [e.value for e in assign.value.elts][:2]


# ---------------------------------------------------------------- the public API
def test_public_arguments_keep_the_spec_names_where_python_allows(tmp_path):
    text = ("attention api\ndims P\ninput self[p], _forward[p], X_[p]\n"
            "param class = 1\nparam class_ = 2\nparam __p = 3\nparam backend = 4\n"
            "param __debug__ = 0\n"
            "Y[p] = self[p] * class + _forward[p] * class_ + X_[p] * __p + backend + "
            "__debug__\noutput Y\n")
    module = import_file(compile_to_file(text, tmp_path), "api")
    public = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert public(module.reference) == ["self_", "_forward_", "X_", "class_", "class__",
                                        "__p", "backend_", "__debug__0_"]
    assert public(module.api) == ["self_", "_forward_", "X_", "backend", "class_",
                                  "class__", "__p", "backend_", "__debug__0_"]
    x = [torch.full((3,), float(v)) for v in (1, 10, 100)]
    expected = 1 * 1 + 10 * 2 + 100 * 3 + 4
    assert module.reference(*x).tolist() == [expected] * 3
    # Keywords by those names, in the function and the class (`__p` through **more,
    # since Python renames `__p` inside a class body).
    changed = 1 * 5 + 10 * 6 + 100 * 7 + 8 + 9
    given = dict(class_=5, class__=6, __p=7, backend_=8, __debug__0_=9)
    assert module.reference(*x, **given).tolist() == [changed] * 3
    assert module.api(*x, backend="torch", **given).tolist() == [changed] * 3
    assert module.Api(backend="torch", **given)(*x).tolist() == [changed] * 3
    with pytest.raises(TypeError, match="unknown param 'nope'"):
        module.Api(backend="torch", nope=1)


@pytest.mark.parametrize("header, cls, function", [
    ("Softcap", "Softcap", "Softcap_"), ("GQA", "GQA", "GQA_"), ("none", "None_", "none"),
    ("TUNING", "TUNING_", "TUNING__"), ("reference", "Reference", "reference_"),
    ("_2pass", "Attention2pass", "_2pass"), ("softmax_3pass", "Softmax3pass", "softmax_3pass"),
])
def test_class_and_function_names_never_collide(header, cls, function):
    text = (ROOT / "examples" / "softcap.attn").read_text().replace(
        "attention softcap", f"attention {header}")
    module = einsumattn.compile(text, backend="torch")
    assert module.__all__ == [cls, function, "reference"]
    q = torch.randn(1, 2, 4, 3)
    torch.testing.assert_close(getattr(module, function)(q, q, q, backend="torch"),
                               getattr(module, cls)(backend="torch")(q, q, q))
    torch.testing.assert_close(module.compiled(q, q, q), module.reference(q, q, q))


# ---------------------------------------------------------------- module names
def _cli(*arguments, cwd=None):
    return subprocess.run([sys.executable, "-m", "einsumattn", *arguments],
                          capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


SIMPLE = "dims P\ninput X[p]\nY[p] = X[p] * 2\noutput Y\n"


@pytest.mark.parametrize("name, what", [
    ("torch", "torch.py would be imported instead of it"),
    ("os", "os.py would be imported instead of it"),
    ("numpy", "would be imported instead of it"),
    ("__init__", "is a Python special name"),
    ("lambda", "is a Python keyword"),
    ("x" * 240, "has 240 characters"),
])
def test_module_names_that_cannot_work_are_located_errors(tmp_path, name, what):
    """`attention torch -o .` would shadow torch for every script in that folder;
    `attention __init__ -o pkg` would overwrite pkg/__init__.py; a keyword cannot be
    imported; 240 characters make the file name too long: each is a located error
    (exit 2) and nothing is written."""
    spec = tmp_path / "spec.attn"
    spec.write_text(f"attention {name}\n{SIMPLE}")
    (tmp_path / "pkg").mkdir()
    result = _cli("compile", str(spec), "-o", "pkg", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"spec.attn:1:11: error: the module name '{name[:80]}" in result.stderr
    assert what in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "pkg").iterdir()) == []


def test_a_module_name_from_the_file_name_names_the_file(tmp_path):
    spec = tmp_path / "torch.attn"
    spec.write_text(SIMPLE)
    with pytest.raises(einsumattn.SpecError) as error:
        compile_to_file(spec, tmp_path / "out")
    assert error.value.span is None
    assert error.value.render().startswith(f"{spec}: error: the module name 'torch' (from "
                                           f"the file name")
    assert "`attention NAME` line" in error.value.hint


def test_the_longest_allowed_name_compiles(tmp_path):
    name = "a" * names.MAX_MODULE_NAME
    path = compile_to_file(f"attention {name}\n{SIMPLE}", tmp_path)
    assert len(f".{path.name}.{'0' * 16}.tmp".encode()) <= 255
    assert import_file(path, "longest").reference(torch.ones(2)).tolist() == [2.0, 2.0]


# ---------------------------------------------------------------- text from outside the IR
def test_a_file_name_cannot_inject_code(tmp_path, monkeypatch):
    """A file named `x\"\"\"; open("SENTINEL","w"); \"\"\".attn` once ended the module's
    docstring and ran its code at import."""
    monkeypatch.chdir(tmp_path)
    name = 'x"""; open("SENTINEL","w"); """.attn'
    spec = tmp_path / name
    spec.write_text(f"attention injected\n{SIMPLE}")
    result = _cli("compile", name, "-o", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    module = import_file(tmp_path / "out" / "injected.py", "injected")
    assert f"Generated from {name}." in module.__doc__
    assert not (tmp_path / "SENTINEL").exists()


def test_a_windows_path_does_not_break_the_docstring():
    text = f"attention windows\n{SIMPLE}"
    source = Source(text, "C:\\Users\\me\\specs\\x.attn")
    module = _exec(generate(load_source(source)))
    assert "Generated from C:\\Users\\me\\specs\\x.attn." in module.__doc__


def _exec(code: str):
    return load_generated(code, "outside")


@settings(max_examples=examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(filename=st.text(st.characters(blacklist_categories=()), min_size=1, max_size=40),
       comment=st.text(st.characters(blacklist_characters="\n\r"), max_size=60))
def test_any_file_name_and_comment_reach_the_docstring_exactly(filename, comment):
    """Whatever the file name and the spec's comments hold (quotes, backslashes, triple
    quotes, control characters, surrogates), the module imports and its docstring holds
    them exactly."""
    text = f"# {comment}\nattention outside\n{SIMPLE}"
    try:
        cascade = load_source(Source(text, filename))
    except einsumattn.SpecError:
        return                                    # a comment the language refuses
    module = _exec(generate(cascade))
    assert f"Generated from {filename}." in module.__doc__
    assert f"    # {comment}\n" in module.__doc__
    assert module.reference(torch.ones(2)).tolist() == [2.0, 2.0]


def test_a_file_name_that_is_not_utf8_compiles(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/spec\xff.attn"
    with open(raw, "w") as stream:
        stream.write(f"attention bytes_name\n{SIMPLE}")
    path = os.fsdecode(raw)
    module = einsumattn.compile(path, backend="torch")
    assert f"Generated from {path}." in module.__doc__


def test_the_cache_key_covers_every_input_of_generate():
    """Changing any field of the Source or of the Options generate() receives changes
    the key (the key iterates the fields, so a new one cannot be forgotten)."""
    source, options = Source("spec text", "a.attn"), Options()
    key = cache_key(source, options)
    changes = {"text": "other text", "filename": "b.attn", "rewrite": False, "tile": 32,
               "train": True, "merge": True, "module_name": "other"}
    fields = [f.name for f in dataclasses.fields(Source) + dataclasses.fields(Options)]
    assert sorted(fields) == sorted(changes)
    for field in dataclasses.fields(Source):
        assert cache_key(dataclasses.replace(source, **{field.name: changes[field.name]}),
                         options) != key
    for field in dataclasses.fields(Options):
        assert cache_key(source, dataclasses.replace(
            options, **{field.name: changes[field.name]})) != key
    assert list(inspect.signature(Options).parameters) == \
        [f.name for f in dataclasses.fields(Options)]


def test_one_spec_text_under_two_file_names_gives_two_modules(tmp_path):
    text = f"attention twice\n{SIMPLE}"
    for name in ("first.attn", "second.attn"):
        (tmp_path / name).write_text(text)
    first = einsumattn.compile(tmp_path / "first.attn", backend="torch")
    second = einsumattn.compile(tmp_path / "second.attn", backend="torch")
    assert "first.attn" in first.__doc__ and "second.attn" in second.__doc__


# ---------------------------------------------------------------- cache trust
def _entry(spec) -> pathlib.Path:
    """Compile `spec` into the cache; the path of its entry."""
    return pathlib.Path(einsumattn.compile(spec, backend="torch").__file__)


@pytest.mark.parametrize("damage", ["empty", "truncated", "corrupted", "no checksum",
                                    "another spec"])
def test_a_damaged_cache_entry_is_rebuilt(damage):
    spec = f"attention cached\n{SIMPLE}"
    path = _entry(spec)
    whole = open(path, "rb").read()
    other = sealed(generate(einsumattn.load(f"attention cached\n{SIMPLE.replace('2', '3')}")))
    damaged = {"empty": b"", "truncated": whole[:len(whole) // 2],
               "corrupted": whole.replace(b"* 2", b"* 5"),
               "no checksum": whole[:whole.rindex(b"# einsumattn cache entry")],
               "another spec": other.encode()}[damage]
    assert damaged != whole
    open(path, "wb").write(damaged)
    assert verified(path, spec) is None
    module = einsumattn.compile(spec, backend="torch")
    assert module.compiled(torch.ones(2)).tolist() == [2.0, 2.0]
    assert open(path, "rb").read() == whole


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_generated_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out = compile_to_file(f"attention moded\n{SIMPLE}", tmp_path / "out")
        entry = _entry(f"attention moded_cached\n{SIMPLE}")
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == mode
    assert os.stat(entry).st_mode & 0o777 == mode


def test_writes_reach_the_disk(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda handle: (synced.append(os.fstat(handle)),
                                                     real(handle))[1])
    write_atomically(tmp_path / "folder" / "file.py", "x = 1\n")
    import stat
    assert [stat.S_ISREG(s.st_mode) for s in synced] == [True, False]   # file, folder
    assert (tmp_path / "folder" / "file.py").read_text() == "x = 1\n"
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["file.py"]


def test_concurrent_compiles_of_one_spec_both_succeed(tmp_path):
    spec = tmp_path / "race.attn"
    spec.write_text((ROOT / "examples" / "softcap.attn").read_text().replace(
        "attention softcap", "attention race"))
    script = ("import sys, torch, einsumattn\n"
              "m = einsumattn.compile(sys.argv[1], backend='torch')\n"
              "q = torch.ones(1, 1, 3, 2)\n"
              "print(m.compiled(q, q, q).sum().item())\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EINSUMATTN_CACHE_DIR": str(tmp_path / "c")}
    runs = [subprocess.Popen([sys.executable, "-c", script, str(spec)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    results = [run.communicate(timeout=600) + (run.returncode,) for run in runs]
    assert all(code == 0 for _, _, code in results), [err[-2000:] for _, err, _ in results]
    assert len({out for out, _, _ in results}) == 1
    entries = list((tmp_path / "c").rglob("*.py"))
    assert len(entries) == 1 and verified(entries[0], spec.read_text()) is not None
    assert not list((tmp_path / "c").rglob("*.tmp"))


def test_cache_dir_is_where_the_environment_says(tmp_path):
    assert cache_dir() == tmp_path / "cache"
