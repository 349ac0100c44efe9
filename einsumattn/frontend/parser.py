"""Text -> syntax tree: the lark LALR parser over `grammars/attn.lark`, and syntax errors
turned into diagnostics.

The parser never lets an exception other than `SpecError` escape for any input text:
binary junk, an empty file, megabytes of text and deep nesting all end in a diagnostic.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Iterator

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (UnexpectedCharacters, UnexpectedEOF, UnexpectedInput,
                             UnexpectedToken, VisitError)

from ..defaults import cache_dir
from ..diagnostics import Source, SpecError, Span
from ..resources import folder
from . import ast, tables

# Reserved words of the language: keywords and function names (LANGUAGE.md, "Lexical rules").
KEYWORDS = frozenset("attention dims input param split init output where and or not "
                     "sum max min inf".split())
FUNCTIONS = frozenset("exp log sqrt tanh sigmoid relu elu abs sign max min where".split())
RESERVED = KEYWORDS | FUNCTIONS
# Functions of version 1.1 (LANGUAGE.md): recognised only before `(`, so not reserved: a
# 1.0 spec that names a tensor or param `softplus` keeps working.
FUNCTIONS_1_1 = frozenset("softplus logsigmoid log1p expm1 silu erf".split())
CALLABLE = FUNCTIONS | FUNCTIONS_1_1

# The largest integer a literal (or, in ir/constants.py, a constant integer step) may
# have: every integer up to it is exact in float64, and in int64 with room to spare.
MAX_EXACT_INTEGER = 2**53

# The largest spec accepted, in bytes of UTF-8 (the biggest attention spec is a few KB):
# files are read only this far, so /dev/zero or a log file is refused at once, and
# the time of every later stage is bounded with it.
MAX_SPEC_BYTES = 2**20

# Deeper nesting than this is rejected with a diagnostic; the later stages walk
# expressions recursively, and no attention formula comes near it.
MAX_NESTING = 64
# The deepest expression tree accepted, counting each operator of a chain (`a+b+c` is 3
# deep): the recursive stages stay far below Python's recursion limit.
MAX_EXPRESSION_DEPTH = 200

_TOKEN_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "INT": "an integer", "_NL": "the end of the line",
    "$END": "the end of the file", "LSQB": "'['", "RSQB": "']'", "LPAR": "'('",
    "RPAR": "')'", "COMMA": "','", "EQUAL": "'='", "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*', '/', '//' or '%'", "POW": "'**'", "COMP_OP": "a comparison",
    "REDOP": "'sum', 'max' or 'min'", "WHERE": "'where'", "AND": "'and'", "OR": "'or'",
    "NOT": "'not'", "ARROW": "'->'", "INF": "'inf'",
}


GRAMMAR = folder("grammars") / "attn.lark"


def grammar_text() -> str:
    # A path beside the module, as for the tables (tables.SHIPPED_TABLE): importlib's
    # resources API would import zipfile and its readers to find it (3 ms of a compile
    # where site-packages has not loaded them already).
    return GRAMMAR.read_text("utf-8")


def lark_options() -> dict:
    return dict(parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=False)


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    # Building the LALR tables costs more than the rest of parsing: they are read from
    # the file shipped beside the grammar, or one built earlier (frontend/tables.py).
    rebuilt = _rebuilt_table()
    return tables.load_parser(grammar_text(), lark_options(), _BracketNewlines(),
                              read_from=[tables.SHIPPED_TABLE, *filter(None, [rebuilt])],
                              write_to=rebuilt)


def _rebuilt_table() -> Path | None:
    """Where tables built at run time are kept: the user's cache folder, if there is one
    (with no home folder and no EINSUMATTN_CACHE_DIR, parsing still works)."""
    try:
        return cache_dir() / "parser" / tables.SHIPPED_TABLE.name
    except (RuntimeError, KeyError, OSError):
        return None


def write_shipped_table() -> Path:
    """Build the tables from the grammar and save them as the package's table file."""
    postlex = _BracketNewlines()
    built = Lark(grammar_text(), postlex=postlex, **lark_options())
    key = tables.table_key(grammar_text(), lark_options(), postlex)
    if not tables.write_table(built, tables.SHIPPED_TABLE, key):
        raise OSError(f"cannot write {tables.SHIPPED_TABLE}")
    return tables.SHIPPED_TABLE


# Binary operators by how loosely they bind; an operator ends the chains of the operators
# that bind tighter (`a*b + c*d` is two products of one '*' each).
_CHAIN_CLASSES = ("OR", "AND", "COMP_OP", "ADD_OP", "MUL_OP")
# Tokens after which '+' or '-' is binary (else it is unary minus or plus).
_VALUE_END = frozenset({"NAME", "NUMBER", "INT", "INF", "RPAR", "RSQB"})
# Tokens that end every chain at their bracket level: a new operand list or statement
# part. (`where` starts a filter too, unless it calls where(...).)
_CHAIN_BREAKS = frozenset({"COMMA", "EQUAL", "_NL"})


class _BracketNewlines:
    """Post-lexer: a newline inside (...) or [...] does not end the statement.

    It also bounds bracket nesting, so that deeply nested input is a diagnostic and not
    a RecursionError in a later stage; and it stops an operator chain longer than
    MAX_EXPRESSION_DEPTH as the tokens arrive. Such a chain is rejected after parsing
    anyway (it folds into a tree that deep), but parsing a megabyte of `a + a + ...`
    first took minutes and half a gigabyte.
    """

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.open_brackets: list[Token] = []

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        self.open_brackets = []
        # Per open bracket (and the statement level): operators in the current chain of
        # each class.
        chains: list[dict[str, int]] = [{}]
        previous = None
        for token in stream:
            kind = token.type
            if previous == "WHERE" and kind != "LPAR":
                chains[-1].clear()
            if kind in ("LPAR", "LSQB"):
                self.open_brackets.append(token)
                chains.append({})
                if len(self.open_brackets) > MAX_NESTING:
                    raise SpecError(
                        f"brackets nested more than {MAX_NESTING} deep",
                        _token_span(token),
                        "define intermediate tensors instead of one deeply nested expression")
            elif kind in ("RPAR", "RSQB"):
                if self.open_brackets:
                    self.open_brackets.pop()
                    chains.pop()
            elif kind == "_NL" and self.open_brackets:
                continue
            elif kind in _CHAIN_BREAKS:
                chains[-1].clear()
            elif kind in _CHAIN_CLASSES and (kind != "ADD_OP" or previous in _VALUE_END):
                _count_operator(chains[-1], token)
            previous = kind
            yield token


def _count_operator(chain: dict[str, int], token: Token) -> None:
    """Count a binary operator in its chain; a chain of more operators than the depth
    limit allows is an error at the first operator past it."""
    position = _CHAIN_CLASSES.index(token.type)
    for tighter in _CHAIN_CLASSES[position + 1:]:
        chain.pop(tighter, None)
    chain[token.type] = chain.get(token.type, 0) + 1
    if chain[token.type] > MAX_EXPRESSION_DEPTH:
        raise SpecError(f"expression more than {MAX_EXPRESSION_DEPTH} operations deep",
                        _token_span(token),
                        "split it into intermediate tensors (one Einsum each)")


def _token_span(token: Token) -> Span:
    line = token.line or 1
    column = token.column or 1
    end_line = token.end_line or line
    end_column = token.end_column or column + max(1, len(str(token)))
    return Span(line, column, end_line, end_column)


def _meta_span(meta) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _span_of(node) -> Span:
    if isinstance(node, Token):
        return _token_span(node)
    return node.span


def _check_name(token: Token, what: str) -> str:
    name = str(token)
    if name in RESERVED:
        raise SpecError(f"'{name}' is a reserved word and cannot name {what}",
                        _token_span(token), f"rename it, e.g. '{name}_'")
    return name


def _number(token: Token) -> float | int:
    text = str(token)
    if text.isdigit():
        return _integer(token)
    return float(text)


def _integer(token: Token, hint: str | None = None) -> int:
    """An integer literal, at most MAX_EXACT_INTEGER (docs/language.md, section 3,
    "Numbers"): generated code keeps integers as Python ints, which torch and Triton
    refuse past 64 bits, on every call."""
    digits = str(token).lstrip("0") or "0"
    # Compare lengths first: int() of a 5000-digit literal is itself an error in Python.
    if len(digits) > len(str(MAX_EXACT_INTEGER)) or int(digits) > MAX_EXACT_INTEGER:
        shown = digits if len(digits) <= 30 else f"{digits[:12]}...{digits[-6:]} " \
                                                  f"({len(digits)} digits)"
        raise SpecError(f"the integer {shown} is larger than 2**53 ({MAX_EXACT_INTEGER}), "
                        f"the largest integer kept exact", _token_span(token),
                        hint or f"write it as a decimal (e.g. {_as_decimal(digits)}) if "
                                f"a floating-point value is meant")
    return int(digits)


_SIZE_HINT = "sizes and split factors are whole numbers up to 2**53"


def _as_decimal(digits: str) -> str:
    """`99999999999999999999999` -> `1e+23`."""
    value = float(digits)
    return repr(value) if math.isfinite(value) else f"{digits[0]}e{len(digits) - 1}"


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds `ast` nodes from lark's parse tree."""

    # -------------------------------------------------------------- expressions
    def number(self, meta, children):
        return ast.Number(_number(children[0]), _meta_span(meta))

    def inf(self, meta, children):
        return ast.Inf(_meta_span(meta))

    def name(self, meta, children):
        # Reserved words used as bare names are reported by the IR builder, which knows
        # the declarations: `dims EXP` is the real mistake behind a use of `exp`.
        token = children[0]
        return ast.Name(str(token), _token_span(token))

    def expr_list(self, meta, children):
        return tuple(children)

    def name_list(self, meta, children):
        return tuple(ast.Name(_check_name(t, "an index variable"), _token_span(t))
                     for t in children)

    def access(self, meta, children):
        token, indices = children
        return ast.Access(_check_name(token, "a tensor"), indices, _meta_span(meta),
                          _token_span(token))

    def call(self, meta, children):
        token, args = children
        return ast.Call(str(token), args, _meta_span(meta), _token_span(token))

    def reduction(self, meta, children):
        op, names, body = children
        return ast.Reduce(str(op), names, body, _meta_span(meta))

    def unary(self, meta, children):
        op, operand = children
        return ast.Unary(str(op), operand, _meta_span(meta))

    def power(self, meta, children):
        left, _op, right = children
        return ast.Binary("**", left, right, _meta_span(meta))

    def _fold(self, children, make):
        # `a - b - c` arrives flat as [a, '-', b, '-', c]; fold it left-associatively.
        result = children[0]
        for i in range(1, len(children), 2):
            op, right = children[i], children[i + 1]
            result = make(str(op), result, right,
                          _span_of(result).merge(_span_of(right)))
        return result

    def arith(self, meta, children):
        return self._fold(children, ast.Binary)

    def term(self, meta, children):
        return self._fold(children, ast.Binary)

    def comparison(self, meta, children):
        if len(children) > 3:
            raise SpecError("chained comparisons such as 'a < b < c' are not supported",
                            _token_span(children[3]), "write 'a < b and b < c'")
        return self._fold(children, ast.Compare)

    def and_test(self, meta, children):
        return self._fold(children, ast.BoolOp)

    def or_test(self, meta, children):
        return self._fold(children, ast.BoolOp)

    def not_test(self, meta, children):
        return ast.Not(children[1], _meta_span(meta))

    # -------------------------------------------------------------- statements
    def lhs(self, meta, children):
        token = children[0]
        indices = children[1] if len(children) > 1 else None
        return ast.Lhs(_check_name(token, "a tensor"), indices, _meta_span(meta),
                       _token_span(token))

    def attention_stmt(self, meta, children):
        return ast.AttentionStmt(_check_name(children[0], "a kernel"), _meta_span(meta))

    def size_int(self, meta, children):
        # An integer in a dim's size (`dims G = H // 2`): the grammar takes only INT there.
        return ast.Number(_integer(children[0], _SIZE_HINT), _token_span(children[0]))

    def dim_decl(self, meta, children):
        name = _check_name(children[0], "a dim")
        if len(children) == 1:
            return ast.DimDecl(name, None, _meta_span(meta))
        size = children[1]
        if isinstance(size, ast.Number):     # `E = 64`, also `E = (64)`: a fixed size
            return ast.DimDecl(name, size.value, _meta_span(meta))
        return ast.DimDecl(name, None, _meta_span(meta), size)   # sized by other dims

    def dims_stmt(self, meta, children):
        return ast.DimsStmt(tuple(children), _meta_span(meta))

    def input_decl(self, meta, children):
        token = children[0]
        indices = children[1] if len(children) > 1 else None
        return ast.InputDecl(_check_name(token, "an input"), indices, _meta_span(meta),
                             _token_span(token))

    def input_stmt(self, meta, children):
        return ast.InputStmt(tuple(children), _meta_span(meta))

    def param_stmt(self, meta, children):
        token = children[0]
        default = children[1] if len(children) > 1 else None
        return ast.ParamStmt(_check_name(token, "a param"), default, _meta_span(meta),
                             _token_span(token))

    def split_factor(self, meta, children):
        token = children[0]
        value = _integer(token, _SIZE_HINT) if token.type == "INT" else str(token)
        return value, _token_span(token)

    def split_stmt(self, meta, children):
        parent, _arrow, outer, inner, by, (factor, factor_span) = children
        if str(by) != "by":
            raise SpecError(f"expected 'by' after the split's ranks, found '{by}'",
                            _token_span(by), "write 'split M -> M1, M0 by 64'")
        return ast.SplitStmt(
            _check_name(parent, "a rank"), _check_name(outer, "a rank"),
            _check_name(inner, "a rank"), factor, _meta_span(meta), _token_span(parent),
            _token_span(outer), _token_span(inner), factor_span)

    def einsum_stmt(self, meta, children):
        lhs, rhs = children[0], children[1]
        filt = children[3] if len(children) > 2 else None
        return ast.EinsumStmt(lhs, rhs, filt, _meta_span(meta))

    def init_stmt(self, meta, children):
        return ast.InitStmt(children[0], children[1], _meta_span(meta))

    def output_stmt(self, meta, children):
        return ast.OutputStmt(tuple((_check_name(t, "an output"), _token_span(t))
                                    for t in children), _meta_span(meta))

    def start(self, meta, children):
        return tuple(children)


def _tree_depth_check(tree: Tree) -> None:
    """Reject parse trees deeper than MAX_NESTING (unary chains, `**` towers) iteratively,
    before any recursive stage sees them."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING * 3:
            raise SpecError(f"expression nested more than {MAX_NESTING} levels deep",
                            _meta_span(node.meta) if not node.meta.empty else None,
                            "define intermediate tensors instead of one deeply nested "
                            "expression")
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, depth + 1))


def _ast_depth_check(statements) -> None:
    """Long operator chains (`a + a + ... + a`) fold into deep trees that the later,
    recursive stages walk: bound their depth with a located diagnostic."""
    for statement in statements:
        roots = [getattr(statement, name, None) for name in ("rhs", "filter", "value",
                                                              "default")]
        stack = [(node, 1) for node in roots if node is not None]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_EXPRESSION_DEPTH:
                raise SpecError(
                    f"expression more than {MAX_EXPRESSION_DEPTH} operations deep",
                    node.span, "split it into intermediate tensors (one Einsum each)")
            stack.extend((child, depth + 1) for child in ast.children(node))


def too_large(prefix: str, filename: str) -> SpecError:
    """The diagnostic for a spec past MAX_SPEC_BYTES, given the text that fits: it points
    at the first character past the limit."""
    prefix = prefix.replace("\r\n", "\n").replace("\r", "\n")
    line = prefix.count("\n") + 1
    column = len(prefix) - (prefix.rfind("\n") + 1) + 1
    return SpecError(f"the spec is larger than the limit of {MAX_SPEC_BYTES // 2**20} MiB "
                     f"({MAX_SPEC_BYTES} bytes)", Span.point(line, column),
                     "a spec is a short text file (the position is the first byte past "
                     "the limit): is this the right file?", Source(prefix, filename))


def parse(text: str, filename: str = "<spec>") -> ast.Spec:
    """Parse spec text into a syntax tree, or raise `SpecError`."""
    if len(text) > MAX_SPEC_BYTES // 4 and len(text.encode("utf-8")) > MAX_SPEC_BYTES:
        fitting = text.encode("utf-8")[:MAX_SPEC_BYTES].decode("utf-8", "ignore")
        raise too_large(fitting, filename)
    # lark counts lines by '\n': bring CRLF and lone CR to '\n' so positions are right.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.startswith("\ufeff"):
        text = text[1:]
    source = Source(text, filename)
    if "\x00" in text:
        index = text.index("\x00")
        line = text.count("\n", 0, index) + 1
        column = index - (text.rfind("\n", 0, index) + 1) + 1
        raise SpecError("the file contains a NUL byte; a spec is plain text",
                        Span.point(line, column), "is this the right file?", source)
    parser = _lark()
    try:
        tree = parser.parse(text + "\n")
        _tree_depth_check(tree)
        statements = _ToAst().transform(tree)
        _ast_depth_check(statements)
    except SpecError as error:
        raise error.with_source(source) from None
    except VisitError as error:
        if isinstance(error.orig_exc, SpecError):
            raise error.orig_exc.with_source(source) from None
        raise
    except UnexpectedInput as error:
        raise _syntax_error(error, parser, source) from None
    if not statements:
        raise SpecError("the spec is empty", None,
                        "a spec needs inputs, at least one Einsum and an 'output' line",
                        source)
    return ast.Spec(statements, source)


_VALUE_START = {"NAME", "NUMBER", "LPAR", "INF", "REDOP", "WHERE"}
_OPERATORS = {"ADD_OP", "MUL_OP", "POW", "COMP_OP"}


def _describe(token_types) -> str:
    """What the parser expected, in words."""
    expected = {t for t in token_types if not t.startswith("__")}
    if expected & _VALUE_START and "NAME" in expected and "NUMBER" in expected:
        return "a value here: a name, a number, '(' or a function call"
    if expected & _OPERATORS and "_NL" in expected:
        return "an operator (such as '*') or the end of the line here"
    words = sorted({_TOKEN_WORDS.get(t, f"'{t.lower()}'") for t in expected})
    if len(words) > 5:
        return "something else here"
    return " or ".join(words) + " here"


def _text_before(source: Source, token: Token) -> str:
    """The statement text before `token` on its line (lark records the previous token
    only for some errors, so read it from the source)."""
    return source.line_text(token.line)[:token.column - 1].rstrip()


def _syntax_error(error: UnexpectedInput, parser: Lark, source: Source) -> SpecError:
    if isinstance(error, UnexpectedCharacters):
        char = source.text[error.pos_in_stream] if error.pos_in_stream < len(source.text) \
            else "?"
        shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
        return SpecError(f"unexpected character {shown}",
                         Span.point(error.line, error.column),
                         "specs use names, numbers, brackets and the operators "
                         "+ - * / // % ** < <= > >= == !=", source)
    if isinstance(error, UnexpectedToken):
        token = error.token
        accepted = set(error.expected)
        if getattr(error, "interactive_parser", None) is not None:
            try:  # what the parser truly accepts here (the lexer always offers '_NL')
                accepted = set(error.interactive_parser.accepts()) or accepted
            except Exception:  # noqa: BLE001 - a better message is optional
                pass
        expected = _describe(accepted)
        if token.type == "$END":
            return _eof_error(source, expected)
        before = _text_before(source, token)
        after_equal = before.endswith("=") and not before.endswith(("==", "<=", ">=", "!="))
        unclosed = _unclosed_before(source, token)
        if unclosed is not None:
            return SpecError("this bracket is never closed", unclosed,
                             f"close it before the end of the statement (line "
                             f"{token.line} reads as its continuation)", source)
        reduction = re.search(r"\b(sum|max|min)\s*$", before)
        if token.type == "LSQB" and reduction:
            # `1 + sum[m] X`: underline the reduction to the end of the statement.
            line = source.line_text(token.line).split("#", 1)[0].rstrip()
            start = reduction.start(1) + 1
            return SpecError(f"'{reduction.group(1)}[...]' inside an expression",
                             Span(token.line, start, token.line, len(line) + 1),
                             "a reduction may only stand first on the right of '=' and "
                             "applies to all of it; define an intermediate tensor for it",
                             source)
        continued = _continuation_error(source, token, before)
        if continued is not None:
            return continued
        span = _token_span(token)
        shown = "end of the line" if token.type == "_NL" else f"'{token}'"
        hint = f"expected {expected}"
        if str(token).startswith(".") and before[-1:].isdigit():
            hint = "sizes and split factors are whole numbers"
        elif after_equal and accepted == {"INT"}:
            hint = "a fixed size must be a positive integer, e.g. 'E = 64'"
        elif after_equal and token.type == "_NL":
            hint = "expected an expression after '=' here"
        elif token.type == "EQUAL":
            hint = "'=' defines a tensor; to compare, write '=='"
        elif token.type == "REDOP":
            hint = ("a reduction such as 'sum[m] ...' may only stand first on the right "
                    "of '='; define an intermediate tensor for it")
        return SpecError(f"unexpected {shown}", span, hint, source)
    if isinstance(error, UnexpectedEOF):
        return _eof_error(source, _describe(error.expected))
    return SpecError("could not parse the spec", None, None, source)


# A binary operator that starts a line or ends one: the statement was meant to go on.
# (`->` of a split and unary `not` are not binary operators; `and`/`or` are words.)
_LEADING_OPERATOR = re.compile(r"(\*\*|//|<=|>=|==|!=|-(?!>)|[+*/%<>]|(?:and|or)\b)")
_TRAILING_OPERATOR = re.compile(r"(\*\*|//|<=|>=|==|!=|(?<!-)>|[-+*/%<]|\b(?:and|or))$")
# A line that starts a statement of its own: not the continuation of the line before.
_STATEMENT_START = re.compile(r"(attention|dims|input|param|split|init|output)\b|"
                              r"[A-Za-z_]\w*\s*(\[[^\]]*\])?\s*=(?!=)")
_CONTINUE = ("a statement ends at the end of its line: to continue it on the next line, "
             "wrap the expression in parentheses")


def _code(lines: list[str], line: int) -> str:
    """Line `line` (1-based) without its comment and surrounding blanks."""
    return lines[line - 1].split("#", 1)[0].strip()


def _continuation_error(source: Source, token: Token, before: str) -> SpecError | None:
    """A statement continued on the next line outside brackets: the next line starts
    with a binary operator (the error is on it), or this line ends with one (the error
    is its end). The hint says to wrap the expression in parentheses."""
    lines = source.text.split("\n")
    if not 1 <= token.line <= len(lines):
        return None
    code = lines[token.line - 1].split("#", 1)[0]
    leading = _LEADING_OPERATOR.match(code.lstrip())
    if leading is not None:
        head = next((n for n in range(token.line - 1, 0, -1) if _code(lines, n)), None)
        if head is None:
            return None
        operator = leading.group(1)
        column = len(code) - len(code.lstrip()) + 1
        return SpecError(f"unexpected '{operator}' at the start of a line",
                         Span(token.line, column, token.line, column + len(operator)),
                         _continue_hint(lines, head, token.line), source)
    trailing = _TRAILING_OPERATOR.search(before.split("#", 1)[0].rstrip())
    if token.type == "_NL" and trailing is not None:
        tail = next((n for n in range(token.line + 1, len(lines) + 1) if _code(lines, n)),
                    None)
        if tail is None or _STATEMENT_START.match(_code(lines, tail)):
            return None   # an operand is missing: the generic hint says what is expected
        operator = trailing.group(1)
        column = trailing.start(1) + 1
        return SpecError(f"the line ends after '{operator}'",
                         Span(token.line, column, token.line, column + len(operator)),
                         _continue_hint(lines, token.line, tail), source)
    return None


def _continue_hint(lines: list[str], head: int, tail: int) -> str:
    """The continuation hint, with the two lines wrapped where that is easy to show:
    after the last `where` (a filter goes on), else after the `=` of the statement."""
    first, last = _code(lines, head), _code(lines, tail)
    wheres = list(re.finditer(r"\bwhere\b\s*", first))
    opening = wheres[-1] if wheres else re.search(r"(?<![<>=!])=(?!=)\s*", first)
    if opening is None or len(first) + len(last) > 80:
        return _CONTINUE
    at = opening.end()
    return (f"{_CONTINUE}: '{first[:at]}({first[at:]}' on line {head} and '{last})' on "
            f"line {tail}")


def _unclosed_before(source: Source, token: Token) -> Span | None:
    """If `token` starts its line while a bracket opened on an earlier line is still
    open, that bracket is the likely culprit: newlines inside brackets continue a
    statement, so an unclosed one swallows the next line."""
    line_text = source.line_text(token.line)
    if token.column != len(line_text) - len(line_text.lstrip()) + 1:
        return None
    stack = _open_brackets(source, upto_line=token.line)
    if stack and stack[-1][0] < token.line:
        return Span.point(*stack[-1])
    return None


def _open_brackets(source: Source, upto_line: int | None = None) -> list[tuple[int, int]]:
    """Positions of the brackets still open (ignoring comments), before `upto_line`."""
    stack: list[tuple[int, int]] = []
    for number, text in enumerate(source.text.split("\n"), 1):
        if upto_line is not None and number >= upto_line:
            break
        for column, char in enumerate(text.split("#", 1)[0], 1):
            if char in "([":
                stack.append((number, column))
            elif char in ")]" and stack:
                stack.pop()
    return stack


def _eof_error(source: Source, expected: str) -> SpecError:
    # At the end of the file the likely cause is an unclosed bracket: point at it.
    stack = _open_brackets(source)
    if stack:
        return SpecError("this bracket is never closed", Span.point(*stack[-1]),
                         "close it before the end of the statement", source)
    last = len(source.text.split("\n")) or 1
    while last > 1 and not source.line_text(last).strip():
        last -= 1
    return SpecError("the spec ends in the middle of a statement",
                     Span.point(last, max(1, len(source.line_text(last)) + 1)),
                     f"expected {expected}", source)
