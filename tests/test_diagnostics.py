"""Golden tests for every diagnostic of `einsumattn parse`.

Each `tests/golden/diagnostics/NAME.attn` is a valid softmax spec (FuseMax's 3-pass or
1-pass cascade) with exactly one problem; its first line is a comment saying which.
`NAME.txt` next to it is the exact stderr of

    einsumattn parse tests/golden/diagnostics/NAME.attn

run from the repository root (exit status 2). The CLI is run in-process.

To add a diagnostic, write `NAME.attn` and run

    UPDATE_GOLDEN=1 python3 -m pytest -q tests/test_diagnostics.py

which (re)writes the `.txt` files from the current output. Then READ every changed
`.txt`: the line:column must name the offending token, the carets must underline it,
and the hint must say what would fix it. Do not bake a wrong message into a golden
file: write the message it should be instead, and let the test fail until it is fixed.

`PENDING` lists the golden files that hold the *desired* output of a diagnostic that is
currently wrong or missing; these tests fail until the diagnostic is fixed, and
`UPDATE_GOLDEN=1` leaves their `.txt` alone (use `UPDATE_GOLDEN=force` to rewrite them
too, once fixed; then remove them from `PENDING`). The caret width in a pending file is
a suggestion; its line:column, message and hint are the point.

Cases that cannot live in a plain text fixture (non-UTF-8 bytes, NUL, unusual line
breaks) and a few API checks (`SpecError.span`, rendering of very long lines) are
written out below.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import einsumattn
from einsumattn.cli import main

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "diagnostics"
CASES = sorted(GOLDEN.glob("*.attn"))
UPDATE = os.environ.get("UPDATE_GOLDEN", "")

# Golden files whose .txt is the output the diagnostic SHOULD give (today it does not).
PENDING: dict[str, str] = {}


def run_parse(path: str, capsys) -> tuple[int, str, str]:
    code = main(["parse", path])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_golden_files_come_in_pairs():
    assert CASES, f"no fixtures in {GOLDEN}"
    stems = {p.stem for p in CASES}
    orphans = sorted(p.name for p in GOLDEN.glob("*.txt") if p.stem not in stems)
    assert not orphans, f".txt without an .attn: {orphans}"
    assert not set(PENDING) - stems, f"PENDING names no fixture: {set(PENDING) - stems}"


@pytest.mark.parametrize("spec", CASES, ids=[p.stem for p in CASES])
def test_diagnostic(spec: Path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    relative = spec.relative_to(REPO).as_posix()
    code, out, err = run_parse(relative, capsys)

    assert "Traceback" not in err and "Traceback" not in out, err
    assert "internal error" not in err, err
    assert code == 2, f"exit status {code}, expected 2 (a spec error)\nstdout:\n{out}\n" \
                      f"stderr:\n{err}"
    assert out == "", f"a rejected spec printed on stdout:\n{out}"
    assert err.startswith(relative), f"the diagnostic does not start with the file name:\n{err}"

    golden = spec.with_suffix(".txt")
    if UPDATE == "force" or (UPDATE and spec.stem not in PENDING):
        golden.write_text(err, encoding="utf-8")
    assert golden.exists(), f"{golden.name} missing: run with UPDATE_GOLDEN=1 and review it"
    expected = golden.read_text(encoding="utf-8")
    why = f"\nknown defect: {PENDING[spec.stem]}" if spec.stem in PENDING else ""
    assert err == expected, (f"diagnostic for {spec.name} differs from {golden.name}{why}\n"
                             f"--- expected\n{expected}--- got\n{err}")


# ------------------------------------------------------------------ bytes and line breaks

@pytest.mark.parametrize("name, data, column, shown, byte", [
    ("latin1.attn", b"Y[m] = X[m] * 2  # \xe9t\xe9", 20, "Y[m] = X[m] * 2  # ", "0xe9"),
    # The column counts characters, not bytes: 'é' (2 bytes in UTF-8) is one column.
    ("mb.attn", "Y[m] = X[m] # été ".encode("utf-8") + b"\xff", 19, "Y[m] = X[m] # été ",
     "0xff"),
])
def test_not_utf8(name, data, column, shown, byte, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(name).write_bytes(b"attention a\ndims M\ninput X[m]\n" + data + b"\noutput Y\n")
    code, out, err = run_parse(name, capsys)
    assert code == 2 and out == ""
    assert err == (f"{name}:4:{column}: error: the file is not UTF-8 text (byte {byte})\n"
                   f"    4 | {shown}\n"
                   f"      | {' ' * (column - 1)}^\n"
                   "hint: a spec is a UTF-8 text file\n")


def test_nul_byte(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("nul.attn").write_bytes(b"attention a\ndims M\ninput X[m]\nY[m] = X[m]\x00\n"
                                 b"output Y\n")
    code, out, err = run_parse("nul.attn", capsys)
    assert code == 2 and out == ""
    assert err == ("nul.attn:4:12: error: the file contains a NUL byte; a spec is plain "
                   "text\n"
                   "    4 | Y[m] = X[m]?\n"
                   "      |            ^\n"
                   "hint: is this the right file?\n")


BAD_LINE = "Y[m] = XX[m] * 2"
LINE_BREAK_SPECS = {
    # name: (spec text, line of BAD_LINE)
    "crlf": ("attention a\r\ndims M\r\ninput X[m]\r\n" + BAD_LINE + "\r\noutput Y\r\n", 4),
    "cr_only": ("attention a\rdims M\rinput X[m]\r" + BAD_LINE + "\routput Y\r", 4),
    "form_feed": ("attention a\n\f\ndims M\ninput X[m]\n" + BAD_LINE + "\noutput Y\n", 5),
    "u2028_in_comment": ("# a\u2028b\nattention a\ndims M\ninput X[m]\n" + BAD_LINE
                         + "\noutput Y\n", 5),
    "nel_in_comment": ("# caf\u0085\nattention a\ndims M\ninput X[m]\n" + BAD_LINE
                       + "\noutput Y\n", 5),
}


@pytest.mark.parametrize("name", sorted(LINE_BREAK_SPECS))
def test_line_breaks(name, tmp_path):
    """Line numbers and the shown source line agree with the editor's view of the file,
    whatever the line breaks, and characters that are not line breaks in the language
    (form feed, U+2028, NEL inside a comment) do not shift them."""
    text, line = LINE_BREAK_SPECS[name]
    path = tmp_path / f"{name}.attn"
    path.write_bytes(text.encode("utf-8"))
    with pytest.raises(einsumattn.SpecError) as info:
        einsumattn.load(path)
    error = info.value
    assert (error.span.line, error.span.column) == (line, 8), error.render()
    rendered = error.render().splitlines()
    assert rendered[1] == f"{line:>5} | {BAD_LINE}", error.render()
    assert rendered[2] == "      | " + " " * 7 + "^^", error.render()


# ------------------------------------------------------------------ the API

SOFTMAX = (REPO / "examples" / "softmax_3pass.attn").read_text()


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.split("\n"), 1) if needle in line)


def test_softmax_base_is_valid():
    einsumattn.load(SOFTMAX)


def test_span_of_unknown_tensor():
    with pytest.raises(einsumattn.SpecError) as info:
        einsumattn.load(SOFTMAX.replace("exp(QK[", "exp(QKK["))
    span = info.value.span
    line = _line_of(SOFTMAX, "exp(QK[")
    assert (span.line, span.column, span.end_line, span.end_column) == (line, 22, line, 25)
    assert info.value.hint == "did you mean 'QK'?"
    assert info.value.render().startswith(f"<spec>:{line}:22: error: unknown tensor 'QKK'\n")


def test_span_of_reduced_variable_on_left():
    with pytest.raises(einsumattn.SpecError) as info:
        einsumattn.load(SOFTMAX.replace("max[m] QK", "max[m, p] QK"))
    span = info.value.span
    line = _line_of(SOFTMAX, "max[m] QK")
    assert (span.line, span.column, span.end_line, span.end_column) == (line, 25, line, 26)


LONG = 10_000


@pytest.mark.parametrize("where", [20, LONG // 2, LONG - 40])
def test_render_of_a_very_long_line(where):
    """A 10k-character line is shown as a window of at most ~110 characters, and the
    caret stands under the offending token wherever it is on the line."""
    statement = "Y[m] = X[m] * XX[m]"
    line = " " * where + statement + "  # " + "c" * (LONG - where - len(statement) - 4)
    assert len(line) == LONG
    column = where + statement.index("XX") + 1
    with pytest.raises(einsumattn.SpecError) as info:
        einsumattn.load(f"attention a\ndims M\ninput X[m]\n{line}\noutput Y\n")
    error = info.value
    assert (error.span.line, error.span.column) == (4, column)
    head, shown, carets, *rest = error.render().splitlines()
    assert head == f"<spec>:4:{column}: error: unknown tensor 'XX'"
    assert len(shown) <= 120, f"{len(shown)} characters shown"
    assert len(carets) <= 120
    assert shown.startswith("    4 | ") and carets.startswith("      | ")
    first = carets.index("^")
    assert carets[first:] == "^^", carets
    assert shown[first:first + 5] == "XX[m]", (shown, carets)
    assert rest == ["hint: did you mean 'X'?"]


def test_long_flat_sum_is_not_a_recursion_error():
    """A valid Einsum summing 1000 terms on one line: accepted, or at worst a located
    SpecError; never a RecursionError out of `einsumattn.load`."""
    line = "Y[m] = " + " + ".join(["X[m]"] * 1000)
    text = f"attention a\ndims M\ninput X[m]\n{line}\noutput Y\n"
    recursion = False
    try:
        einsumattn.load(text)
    except einsumattn.SpecError as error:
        assert error.span is not None and error.span.line == 4, error.render()
    except RecursionError:
        recursion = True
    assert not recursion, "einsumattn.load raised RecursionError on a valid 1000-term sum"


# ------------------------------------------------------------------ resource bounds

def test_a_long_operator_chain_stops_parsing_where_it_passes_the_limit(monkeypatch):
    """A flat chain past the depth limit is refused while it is being lexed, at the first
    operator past the limit, before lark builds the tree (parsing a megabyte of
    `X[m] + X[m] + ...` first took minutes)."""
    from einsumattn.frontend import parser

    def no_tree(*args):
        raise AssertionError("the whole chain was parsed into a tree")

    monkeypatch.setattr(parser._ToAst, "transform", no_tree)
    line = "Y[m] = " + " + ".join(["X[m]"] * 20_000)
    with pytest.raises(einsumattn.SpecError) as caught:
        einsumattn.load(f"dims M\ninput X[m]\n{line}\noutput Y\n")
    error = caught.value
    assert error.message == "expression more than 200 operations deep"
    # The 201st '+': after "Y[m] = " and 201 terms of "X[m] + ".
    assert (error.span.line, error.span.column) == (3, len("Y[m] = ") + 201 * 7 - 1)


@pytest.mark.parametrize("rhs", [
    " + ".join(["X[m]"] * 199),                     # 199 '+': depth 200, the limit
    " + ".join(["X[m] * X[m]"] * 150),              # '+' ends each product's chain
    " * ".join(["(X[m] + X[m])"] * 150),            # brackets start chains of their own
    " + ".join(["-X[m]"] * 100) + " - " + " - ".join(["X[m]"] * 90),  # unary minus
    "max(" + " + ".join(["X[m]"] * 150) + ", " + " + ".join(["X[m]"] * 150) + ")",
    " + ".join(["where(m < 1, X[m], X[m])"] * 150),  # a where() call is not a filter
])
def test_chains_within_the_limit_are_not_cut_short(rhs):
    """The early check counts only what the depth limit would reject anyway."""
    cascade = einsumattn.load(f"dims M\ninput X[m]\nY[m] = {rhs}\noutput Y\n")
    assert cascade.outputs == ("Y",)


def test_a_filter_starts_a_chain_of_its_own():
    body = " + ".join(["X[m]"] * 150)
    condition = " + ".join(["m"] * 150) + " > 0"
    cascade = einsumattn.load(f"dims M\ninput X[m]\nY[m] = {body} where {condition}\n"
                              f"output Y\n")
    assert cascade.einsums[0].filter is not None


def test_spec_text_past_the_size_limit_is_refused_before_parsing(monkeypatch):
    from einsumattn.frontend import parser

    monkeypatch.setattr(parser, "_lark", lambda: pytest.fail("the parser was started"))
    text = "# padding\n" * (parser.MAX_SPEC_BYTES // 10) + "dims M\n"
    with pytest.raises(einsumattn.SpecError) as caught:
        einsumattn.load(text)
    error = caught.value
    assert "larger than the limit of 1 MiB (1048576 bytes)" in error.message
    # The first byte past the limit: 1 MiB of 10-byte lines ends 6 bytes into a line.
    assert (error.span.line, error.span.column) == (2**20 // 10 + 1, 2**20 % 10 + 1)
