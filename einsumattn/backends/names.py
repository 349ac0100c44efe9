"""Names in generated code: the spec's names live in a namespace of their own.

A spec may use any name of LANGUAGE.md (`[A-Za-z_][A-Za-z0-9_]*`, less the language's own
keywords and functions): `class`, `torch`, `self`, `lanes`, `BLOCK`, `Q_ptr` are all
legal. The generated code also has names of its own (`torch`, `tl`, `sizes`, `lanes`,
`range`, ...). One rule keeps the two apart by construction, not by a list of reserved
words:

- **Spec names** (tensors, params, ranks, index variables, the attention name, and the
  names rewrites create) are written `name_`: one trailing underscore, PEP 8's spelling
  for a name that would clash. `mangle()` does this; `rename()` applies it to a whole
  Cascade before any emitter runs, so an emitter cannot print an unmangled spec name.
  A name that starts with two underscores is written `name0_` instead, so that no
  spelling is a `__dunder__` (Python reserves those: `__debug__` cannot even be bound).
  A rank named without upper-case letters (`dims n`) is its own index variable in the
  spec; the code needs its size and its index apart, so they are the derived names
  `n__N` and `n__n` (`rank_spelling`).
- **Derived names** (a pointer, a mask, a stride, a kernel made for a spec name) are
  `name_ + "_" + tag`: `Q__ptr`, `QK__ok`, `Q__s0`, `QK__kernel`, `p__BLOCK`,
  `RM__at`. A tag is a fixed word of the generator (`ptr`, `ok`, `ok_ptr`, `s0`, `s1`,
  `kernel`, `fused`, `BLOCK`, ...) that never starts or ends with `_` and never contains
  `__`. Emitters write them as `f"{name}_ptr"` on the mangled name.
- **The generator's own names** (`torch`, `tl`, `sizes`, `lanes`, `BLOCK`, `_bind`, the
  builtins it calls) never end in `_` and never contain `__` (Python's own `__dunder__`
  names aside, which no spelling above produces).

Why nothing can collide: (a) a spec name's spelling ends in `_`; a derived name ends in
its tag, and an own name in a letter or digit, so neither ends in `_`. (b) Two derived
names differ, or are the same name and tag: the last `__` of a derived name is where its
tag starts (the tag has no `__` and does not start with `_`), so name and tag can be
read back. (c) A derived name contains `__` and an own name does not. (d) `mangle` is
one-to-one (strip the `_`, or the `0_`), and spec names are distinct in one namespace
(the IR builder refuses a name declared twice, index variables included; a lower-case
rank, the one name with two meanings, gets two tags). The attention name may equal
another spec name, but it is only ever written in derived names, its kernels', whose
tags (`fused`, `stage1_fused`) no other name gets. Python keywords and builtins never
end in `_`, so no spelling is one of them either.

What a user reads keeps the spec's own spelling: comments in the generated code
(`spec_comments`), the schedule notes and fallback reasons (`spec_text`), the
docstring, error messages and the public API's argument names (`public_names`). Text
from outside the IR (the file name, the spec's text and comments, reports) reaches
generated code only through `string_literal`, which gives a valid Python literal for
any text.

The module's own name (its file name) is checked by `check_module_name`, and the class
and function names it defines are chosen by `class_name` and `function_name`.
"""

from __future__ import annotations

import dataclasses
import keyword
import re
import sys
from typing import Iterable

from ..diagnostics import SpecError, Span
from ..ir import Cascade, Einsum, ParamDecl, Rank, Tensor
from ..ir import expr as ir

# ------------------------------------------------------------------ the spec's namespace


def mangle(name: str) -> str:
    """The spelling of a spec name in generated code: `Q` -> `Q_`, `class` -> `class_`,
    `__x` -> `__x0_` (never a `__dunder__`)."""
    return name + ("0_" if name.startswith("__") else "_")


def rank_spelling(name: str) -> str:
    """The spelling of a rank's size. A rank whose name has no upper-case letter (`dims
    n`) is its own index variable in the spec, but the generated code needs the size and
    the index apart: the size is then `n__N` and the index `n__n` (derived names with
    tags of their own), so that the index stays the size's lower-case spelling as the
    IR wants (`Rank.var`)."""
    return mangle(name) + ("_N" if name == name.lower() else "")


def is_mangled(word: str) -> bool:
    """Whether `word` is the spelling `mangle` gives some name (the inverse's domain)."""
    if word.startswith("__") and len(word) >= 4 and word.endswith("0_"):
        return True
    return len(word) >= 2 and word.endswith("_") and not word[:-1].startswith("__")


def spec_name(word: str) -> str:
    """The spec name `mangle` spelled as `word` (`Q_` -> `Q`, `__x0_` -> `__x`)."""
    if not is_mangled(word):
        raise ValueError(f"{word!r} is not a mangled spec name")
    return word[:-2] if word[:-1].startswith("__") else word[:-1]


def spec_letter(var: str) -> str:
    """An index variable's spelling in the spec when that is one ASCII letter (`m` for
    `m_`, and for an unrenamed `m`), else '': torch.einsum subscripts can then be the
    spec's own variables."""
    bare = spec_text(var)
    return bare if len(bare) == 1 and bare.isascii() and bare.isalpha() else ""


_WORD = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z_][A-Za-z0-9_]*")


def spec_text(text: str) -> str:
    """Text about a renamed cascade (a schedule note, a fallback reason, a comment) with
    each spec name back in the spec's spelling. Exact on text the generator writes: only
    spec names end in `_` there (the rule above), and only a lower-case rank's size and
    index end in the tags `N` and `n`."""
    def original(match: re.Match) -> str:
        word = match.group()
        if word.endswith(("__N", "__n")) and is_mangled(word[:-2]):
            word = word[:-2]
        return spec_name(word) if is_mangled(word) else match.group()
    return _WORD.sub(original, text)


# A comment or a string literal of Python source: outside them, code holds no quote and
# no '#' (the source is valid Python, which the generator ensures). A string may have
# a prefix (r, b, f, u, rb, ...); a backslash escapes the next character, in a raw
# string too as far as where the string ends is concerned.
_COMMENT_OR_STRING = re.compile(
    r"(?P<comment>#[^\r\n]*)"
    r"|[rRbBuUfF]{0,2}(?:"
    r"'''(?:[^'\\]|\\[\s\S]|'(?!''))*'''"
    r'|"""(?:[^"\\]|\\[\s\S]|"(?!""))*"""'
    r"|'(?:[^'\\\r\n]|\\[\s\S])*'"
    r'|"(?:[^"\\\r\n]|\\[\s\S])*")')


def spec_comments(source: str) -> str:
    """Python source with every comment passed through `spec_text`: the generated code's
    comments restate the spec in its own names. Comments are told from a '#' inside a
    string by one regular expression over the source (as Python's tokenizer tells them,
    tests/test_compile_speed.py; `tokenize` took most of the time of printing)."""
    return _COMMENT_OR_STRING.sub(
        lambda match: spec_text(match.group()) if match.group("comment") else match.group(),
        source)


def rename(cascade: Cascade) -> Cascade:
    """The same cascade with every name in its generated-code spelling (`mangle`, ranks
    by `rank_spelling`): tensors, params, ranks (and their sympy size symbols), index
    variables, splits, outputs and the cascade's own name. Emitters given the result
    cannot print an unmangled spec name."""

    def var(name: str) -> str:
        """An index variable: the lower-case spelling of its rank's (Rank.var)."""
        return rank_spelling(name).lower() if name in cascade.ranks else mangle(name)

    def expr(node: ir.Expr | None) -> ir.Expr | None:
        if node is None or isinstance(node, ir.Const):
            return node
        if isinstance(node, ir.Index):
            return dataclasses.replace(node, var=var(node.var))
        if isinstance(node, ir.Dim):
            return dataclasses.replace(node, rank=rank_spelling(node.rank))
        if isinstance(node, ir.Param):
            return dataclasses.replace(node, name=mangle(node.name))
        if isinstance(node, ir.Read):
            return dataclasses.replace(node, tensor=mangle(node.tensor),
                                       indices=tuple(expr(i) for i in node.indices))
        return dataclasses.replace(node, args=tuple(expr(a) for a in node.args))

    def symbol(name: str) -> str:          # a size: a rank's, or a param's (split factor)
        return rank_spelling(name) if name in cascade.ranks else mangle(name)

    def size(value):
        return value.xreplace({s: type(s)(symbol(s.name), **s.assumptions0)
                               for s in value.free_symbols})

    def names(values: Iterable[str], how=mangle) -> tuple[str, ...]:
        return tuple(how(v) for v in values)

    ranks = {rank_spelling(r.name): Rank(rank_spelling(r.name), size(r.size), r.fixed,
                                         r.split_of and rank_spelling(r.split_of), r.span,
                                         expr(r.definition))
             for r in cascade.ranks.values()}
    splits = tuple(dataclasses.replace(
        s, **dict(zip(("parent", "outer", "inner"),
                      names((s.parent, s.outer, s.inner), rank_spelling))),
        factor=symbol(s.factor) if isinstance(s.factor, str) else s.factor)
        for s in cascade.splits)
    params = {mangle(p.name): ParamDecl(mangle(p.name), expr(p.default), p.span)
              for p in cascade.params.values()}
    tensors = {mangle(t.name): Tensor(mangle(t.name), names(t.ranks, rank_spelling),
                                      t.is_input, t.iterative, t.span, t.buffer,
                                      t.bounds and mangle(t.bounds))
               for t in cascade.tensors.values()}
    einsums = tuple(Einsum(mangle(e.tensor), names(e.indices, var), expr(e.body),
                           e.reduce_op, names(e.reduced, var), expr(e.filter), e.iterative,
                           expr(e.init), e.explicit_reduction, e.span)
                    for e in cascade.einsums)
    return dataclasses.replace(cascade, name=mangle(cascade.name), ranks=ranks,
                               splits=splits, params=params, tensors=tensors,
                               einsums=einsums, outputs=names(cascade.outputs))


# ------------------------------------------------------------------ literals


def string_literal(text: str, *, multiline: bool = False) -> str:
    """A Python string literal whose value is exactly `text`, whatever it holds:
    backslashes, quotes, triple quotes, control characters, lone surrogates (from file
    names that are not UTF-8). `multiline`: a triple-quoted literal that keeps newlines
    as they are (a readable docstring)."""
    out = []
    for position, char in enumerate(text):
        # In a triple-quoted literal a quote needs escaping only where it could end the
        # literal: before another quote, or last (no three unescaped quotes in a row).
        quote_ends = not multiline or text[position + 1:position + 2] in ('"', "")
        if char == "\\" or (char == '"' and quote_ends):
            out.append("\\" + char)
        elif char == "\n" and multiline:
            out.append(char)
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    quote = '"""' if multiline else '"'
    return quote + "".join(out) + quote


# ------------------------------------------------------------------ the public API

# Names the public wrappers (`reference`, the function, the class's `__init__` and
# `forward`) read or declare besides the spec's inputs and params: a spec name equal to
# one of them is spelled mangled in the public API instead. tests/test_names.py checks
# the generated wrappers read nothing else.
WRAPPER_NAMES = frozenset({"self", "backend", "more", "super", "_reference", "_forward",
                           "_backend", "_check_params", "state", "overrides", "result",
                           "_merge_partial", "_merge_finish"})

# Names the generated module defines or imports at its top level (besides its kernels,
# its class and its function). tests/test_names.py checks this list against modules.
MODULE_NAMES = frozenset({
    "__all__", "annotations", "math", "os", "warnings", "torch", "triton", "tl",
    "SPEC_SHA256", "EINSUMATTN_VERSION", "INPUTS", "INPUT_RANKS", "OUTPUTS", "PARAMS", "COMPILE_OPTIONS",
    "TRITON_FALLBACK", "TUNING", "TUNING_FUSED", "DOT_ROUNDING", "BACKENDS", "SCHEDULE",
    "reference", "_reference", "_forward", "_backend", "_outwards", "_check_params", "_take", "_bind",
    "_triton_forward", "_dot_dtype", "_FLOAT_DTYPES", "_INT_DTYPES", "_INTERPRETED",
    "_floordiv", "_mod", "_floordiv_f", "_mod_f", "_pow_f", "_to_dot", "_sigmoid", "_sigmoid_exp2",
    "_log1p", "_expm1", "_softplus", "_logsigmoid", "_tanh",
    "_FAST_RCP", "_coefficient_rows", "_key_columns", "_stored", "stored_dtype",
    "_tma_suits", "_descriptor", "_splits", "_kv_splits", "_TritonTrained", "_buffer_dot",
    "TensorDescriptor", "tma",
    "_scheduled", "TORCH_TUNING", "TORCH_FALLBACK",    # backends/torch_scheduled.py
    # configurations per call (schedule/configs.py, templates/module.py.j2)
    "time", "CONFIG_RULES", "CONFIG_TARGET", "AUTOTUNE", "CONFIG_CANDIDATES", "_CONFIGS",
    "_pow2_at_least", "_target", "_tuning", "_config", "_fastest", "_time",
    # compile --merge (transform/merge.py, templates/module.py.j2)
    "MERGE", "partial", "merge", "finish", "log_sum_exp", "_merge_partial", "_merge_combine",
    "_merge_finish", "_merge_partial_bind", "_merge_combine_bind", "_merge_finish_bind",
    "_run", "_replayed_grads",
    # torch.compile: the custom ops (templates/module.py.j2, docs/torch_compile.md)
    "OPS", "OP_NAME", "OP_SCHEMAS", "_compiling", "_shapes", "_as_op", "_cut", "_given", "_fresh",
    "_returned", "_gradients", "_materialized", "_op_forward", "_fake_forward",
    "_setup_forward", "_backward_forward", "_op_backward", "_fake_backward", "_op_train",
    "_fake_train", "_setup_train", "_backward_train", "_op_train_backward",
    "_register_ops"})


def public_names(names: Iterable[str]) -> dict[str, str]:
    """The argument name of each spec input and param in the public API: the spec's own
    name where Python allows it, else the mangled spelling. Not allowed: Python keywords,
    `__debug__` and `WRAPPER_NAMES`; and a name that is the mangled spelling of another one in the
    same API (`class` is `class_` there, so a spec name `class_` becomes `class__`)."""
    names = list(names)
    # `__debug__` is the one identifier Python refuses to bind, even as an argument.
    mangled = {n for n in names if keyword.iskeyword(n) or n in WRAPPER_NAMES
               or n == "__debug__"}
    while True:
        taken = {mangle(n) for n in mangled}
        clash = {n for n in names if n not in mangled and n in taken}
        if not clash:
            return {n: mangle(n) if n in mangled else n for n in names}
        mangled |= clash


def class_name(name: str) -> str:
    """LANGUAGE.md's class name: `softmax_3pass` -> `Softmax3pass` (split at `_`, first
    letters upper-cased). Where that is no valid class name: `Attention` before a leading
    digit (`_2pass` -> `Attention2pass`), and a trailing `_` for a Python keyword
    (`none` -> `None_`) or a name the module defines itself (`TUNING` -> `TUNING_`)."""
    text = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    text = text or "Attention"
    if text[0].isdigit():
        text = "Attention" + text
    if keyword.iskeyword(text) or text in MODULE_NAMES:
        text += "_"
    return text


def function_name(name: str, cls: str, kernels: Iterable[str]) -> str:
    """The module-level function: the attention name, with `_` appended until it is
    neither the class name nor another name the module defines (`attention Softcap`:
    class `Softcap`, function `Softcap_`; `attention reference`: `reference_`)."""
    taken = MODULE_NAMES | {cls} | set(kernels)
    while name in taken or keyword.iskeyword(name):
        name += "_"
    return name


# ------------------------------------------------------------------ the module's file name

# A module name of at most this many characters keeps its file name within 255 bytes
# together with what is added to it: `.NAME.py.<16 hex>.tmp` while it is written (25
# more), `NAME.cpython-3XX.pyc` in __pycache__ (20 more).
MAX_MODULE_NAME = 200

# Modules the generated code imports, or a user's script beside it likely does: a file
# of one of these names in the output folder would be imported in their place.
SHADOWED = frozenset(sys.stdlib_module_names) | {"torch", "triton", "numpy", "einsumattn"}


def module_name_problem(name: str) -> tuple[str, str] | None:
    """Why `name` cannot be a generated module's name (a file NAME.py that can be
    imported without breaking anything), as (what is wrong, what to do); None if it can."""
    rename = "name it with an `attention NAME` line"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return ("is not a Python identifier, so the module could not be imported",
                f"{rename} (letters, digits and '_'), or rename the file")
    if len(name) > MAX_MODULE_NAME:
        return (f"has {len(name)} characters, too long for a file name",
                f"use at most {MAX_MODULE_NAME} characters (the file name and the "
                f"temporary files beside it must stay within 255 bytes)")
    if keyword.iskeyword(name):
        return ("is a Python keyword, so `import` cannot name the module",
                f"{rename} that is not a keyword, e.g. `attention {name}_attention`")
    if name.startswith("__") and name.endswith("__"):
        return (f"is a Python special name: the file {name}.py would act as the "
                f"output folder's {name}",
                f"{rename} that does not start and end with '__'")
    if name in SHADOWED:
        return (f"is the name of a module the generated code or a script beside it "
                f"imports: {name}.py would be imported instead of it",
                f"{rename} that no module has, e.g. `attention {name}_attention`")
    return None


def check_module_name(cascade: Cascade) -> None:
    """Raise a located SpecError when the cascade's name cannot name its module: at the
    `attention` line, or naming the spec file when the name is the file's stem."""
    problem = module_name_problem(cascade.name)
    if problem is None:
        return
    what, hint = problem
    span = _name_span(cascade)
    origin = "" if span is not None else " (from the file name: the spec has no " \
                                         "`attention` line)"
    raise SpecError(f"the module name '{cascade.name[:80]}"
                    f"{'...' if len(cascade.name) > 80 else ''}'{origin} {what}",
                    span=span, hint=hint, source=cascade.source)


def _name_span(cascade: Cascade) -> Span | None:
    """The NAME of the `attention NAME` line, or None when there is none."""
    span = cascade.name_span
    if span is None or cascade.source is None:
        return span
    line = cascade.source.line_text(span.line)
    start = line.find(cascade.name, span.column - 1 + len("attention"))
    if start < 0:
        return span
    return Span(span.line, start + 1, span.line, start + 1 + len(cascade.name))


__all__ = ["mangle", "rank_spelling", "is_mangled", "spec_name", "spec_text", "spec_comments",
           "rename", "string_literal", "public_names", "class_name", "function_name",
           "check_module_name", "module_name_problem", "WRAPPER_NAMES", "MODULE_NAMES",
           "MAX_MODULE_NAME"]
