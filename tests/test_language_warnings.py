"""LANGUAGE.md 1.1: warnings (an implicit sum of a function of the reduced variable) and
`--werror`; statements continued on the next line outside brackets."""

import os
import subprocess
import sys
import warnings

import pytest

import einsumattn
from einsumattn import SpecError, SpecWarning
from einsumattn.cli import main
from einsumattn.ir.lint import lint
from einsumattn.loader import load

from conftest import ROOT

HEAD = "dims P, M, E\ninput Q[p, e], K[m, e], A[p, m], D[m]\nparam scale = 1\n"

SIGMOID = HEAD + "B[p, m] = sigmoid(Q[p, e] * K[m, e])\noutput B\n"

SIGMOID_WARNING = """\
{file}:4:11: {severity}: B sums sigmoid(...) over e (the implicit reduction covers the whole right-hand side)
    4 | B[p, m] = sigmoid(Q[p, e] * K[m, e])
      |           ^^^^^^^^^^^^^^^^^^^^^^^^^^
hint: to apply sigmoid to the sum, define S[p, m] = Q[p, e] * K[m, e] first and write \
sigmoid(S[p, m]); to sum sigmoid(...) over e as written, say so: \
B[p, m] = sum[e] sigmoid(Q[p, e] * K[m, e]), which silences this warning"""


def spec_file(tmp_path, text, name="spec.attn"):
    path = tmp_path / name
    path.write_text(text)
    return path


def found(text):
    """The SpecWarnings loading `text` issues (every one, whatever was issued before)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load(text)
    return [w.message for w in caught if issubclass(w.category, SpecWarning)]


# ----------------------------------------------------------------- the rule

def test_the_example_of_the_contract_warns_with_caret_and_hint():
    (warning,) = found(SIGMOID)
    assert warning.render() == SIGMOID_WARNING.format(file="<spec>", severity="warning")
    assert str(warning) == warning.render()


@pytest.mark.parametrize("body", [
    "B[p, m] = sum[e] sigmoid(Q[p, e] * K[m, e])",      # the explicit form silences it
    "B[p, m] = Q[p, e] * K[m, e] * scale",               # a product
    "O[p] = -A[p, m] / scale + Q[p, e] * 2 - (A[p, m] - D[m])",   # sums, a numerator
    "O[p] = A[p, m] / exp(Q[p, 0])",                     # a denominator without m
    "O[p] = exp(Q[p, 0]) * A[p, m] + A[p, m % 2]",       # a function of no reduced var
    "O[p] = exp(Q[p, 0]) where m <= p",                  # m only in the filter
    "O[p] = exp(A[p, p])",                               # no reduction at all
    "O[p] = max[m] exp(A[p, m])",                        # an explicit max
])
def test_no_warning_for_products_sums_and_explicit_reductions(body):
    name = body.split("[")[0].split(" ")[0]
    assert found(f"{HEAD}{body}\noutput {name}\n") == []


@pytest.mark.parametrize("body, caret, message, hint_start", [
    ("O[p] = A[p, m] * exp(A[p, m] - 1)", "exp(A[p, m] - 1)", "O sums exp(...) over m",
     "to apply exp to the sum, define S[p] = A[p, m] - 1 first and write exp(S[p]); "
     "to sum exp(...) over m as written, say so: O[p] = sum[m] A[p, m] * exp(A[p, m] - 1)"),
    ("O[p] = A[p, m] / D[m]", "D[m]", "O sums a quotient by D[m] over m",
     "to divide by the sum, define S = D[m] first and divide by S; "),
    ("O[p] = A[p, m] ** 2", "A[p, m] ** 2", "O sums A[p, m] ** 2 over m",
     "to apply '**' to the sum, define S[p] = A[p, m] first and write S[p] ** 2; "),
    ("O[p] = where(m <= p, A[p, m], 0)", "where(m <= p, A[p, m], 0)",
     "O sums where(...) over m",
     "to apply where to a sum, define the sum as a tensor of its own first; to sum "
     "where(...) over m as written, say so: O[p] = sum[m] where(m <= p, A[p, m], 0)"),
    ("O[p] = tanh(A[p, m]) + max(Q[p, e], 0) where p < 3", "tanh(A[p, m])",
     "O sums tanh(...) over m",
     "to apply tanh to the sum, define S[p] = A[p, m] first and write tanh(S[p]); to sum "
     "tanh(...) over m as written, say so: O[p] = sum[m, e] tanh(A[p, m]) + max(Q[p, e], "
     "0) where ..., which"),
])
def test_functions_of_the_reduced_variable_warn_at_their_span(body, caret, message,
                                                              hint_start):
    (warning,) = found(f"{HEAD}{body}\noutput O\n")      # one per Einsum, the first
    column = body.index(caret) + 1
    assert (warning.span.line, warning.span.column) == (4, column)
    assert warning.span.end_column == column + len(caret)
    assert warning.message.startswith(message)
    assert warning.hint.startswith(hint_start)
    assert warning.hint.endswith("which silences this warning")


def test_the_hint_names_a_tensor_the_spec_does_not_have():
    text = HEAD.replace("D[m]", "S[m]") + "B[p, m] = sigmoid(Q[p, e] * K[m, e])\noutput B\n"
    (warning,) = found(text)
    assert "define S2[p, m] = Q[p, e] * K[m, e] first" in warning.hint


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.attn"))
                         + sorted((ROOT / "benchmarks" / "specs").glob("*.attn")),
                         ids=lambda p: p.stem)
def test_no_example_warns(path):
    assert found(path) == []
    assert lint(load(path)) == []


# ----------------------------------------------------------------- the library

def test_load_issues_a_python_warning_of_its_own_category():
    assert issubclass(SpecWarning, UserWarning)
    with pytest.warns(SpecWarning) as record:
        einsumattn.load(SIGMOID)
    (warning,) = record
    assert warning.category is einsumattn.SpecWarning
    assert str(warning.message) == SIGMOID_WARNING.format(file="<spec>", severity="warning")
    assert warning.filename == __file__      # attributed to the caller's line


def test_werror_in_python_is_the_warnings_filter():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecWarning)
        with pytest.raises(SpecWarning):
            einsumattn.load(SIGMOID)


def test_a_warning_prints_once_however_often_the_spec_is_loaded(tmp_path):
    path = spec_file(tmp_path, SIGMOID)
    code = ("import einsumattn, sys\n"
            "einsumattn.load(sys.argv[1])\n"
            "for _ in range(3):\n"
            "    einsumattn.load(sys.argv[1])\n"
            "einsumattn.compile(sys.argv[1], backend='torch')\n"
            "einsumattn.compile(sys.argv[1], backend='torch')\n")
    env = dict(os.environ, EINSUMATTN_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("warning:") == 1
    assert f"{path}:4:11: warning: B sums sigmoid(...) over e" in result.stderr


# ----------------------------------------------------------------- the command line

@pytest.mark.parametrize("command", ["parse", "analyze", "rewrite", "compile"])
def test_commands_print_the_warning_and_keep_the_status(command, tmp_path, capsys,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec_file(tmp_path, SIGMOID)
    extra = ["-o", "out"] if command == "compile" else []
    assert main([command, "spec.attn", *extra]) == 0
    err = capsys.readouterr().err
    expected = SIGMOID_WARNING.format(file="spec.attn", severity="warning")
    assert err.startswith(expected + "\n")
    assert err.count("warning:") == 1


@pytest.mark.parametrize("command", ["parse", "analyze", "rewrite", "compile"])
def test_werror_turns_the_warning_into_an_error(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec_file(tmp_path, SIGMOID)
    extra = ["-o", "out"] if command == "compile" else []
    assert main([command, "spec.attn", "--werror", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err == SIGMOID_WARNING.format(file="spec.attn", severity="error") + "\n"
    assert captured.out == ""
    assert not (tmp_path / "out").exists()       # compile stopped before writing


@pytest.mark.parametrize("command", ["parse", "analyze", "rewrite"])
def test_werror_without_warnings_changes_nothing(command, capsys):
    assert main([command, str(ROOT / "examples" / "softmax_3pass.attn"), "--werror"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_werror_reports_every_warning_as_an_error(tmp_path, capsys):
    path = spec_file(tmp_path, HEAD + "X[p] = exp(A[p, m])\nY[p] = A[p, m] ** 2\n"
                                      "output X, Y\n")
    assert main(["parse", str(path)]) == 0
    assert capsys.readouterr().err.count(": warning: ") == 2
    assert main(["parse", str(path), "--werror"]) == 2
    err = capsys.readouterr().err
    assert err.count(": error: ") == 2 and ": warning: " not in err
    assert err.index(":4:8: error: X sums exp(...)") < err.index(":5:8: error: Y sums")


def test_the_command_line_runs_print_the_warning_once(tmp_path):
    path = spec_file(tmp_path, SIGMOID)
    result = subprocess.run([sys.executable, "-m", "einsumattn", "eval", str(path),
                             "--shapes", "P=2,M=2,E=2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == SIGMOID_WARNING.format(file=str(path), severity="warning") + "\n"


# ----------------------------------------------------------------- continuations

CONTINUE = ("hint: a statement ends at the end of its line: to continue it on the next "
            "line, wrap the expression in parentheses")


def error_of(text):
    with pytest.raises(SpecError) as raised:
        load(text)
    return raised.value.render()


def test_a_line_that_starts_with_an_operator():
    assert error_of("dims P, E\ninput Q[p, e]\nS[p] = Q[p, e]\n    + 1\noutput S\n") == (
        "<spec>:4:5: error: unexpected '+' at the start of a line\n"
        "    4 |     + 1\n"
        "      |     ^\n"
        f"{CONTINUE}: 'S[p] = (Q[p, e]' on line 3 and '+ 1)' on line 4")


def test_a_line_that_ends_with_an_operator():
    assert error_of("dims P, E\ninput Q[p, e]\nS[p] = Q[p, e] +  # more\n    1\n"
                    "output S\n") == (
        "<spec>:3:16: error: the line ends after '+'\n"
        "    3 | S[p] = Q[p, e] +  # more\n"
        "      |                ^\n"
        f"{CONTINUE}: 'S[p] = (Q[p, e] +' on line 3 and '1)' on line 4")


@pytest.mark.parametrize("lines, position, wrapped", [
    ("S[p] = Q[p, e]\n\n  # a comment\n  ** 2", "6:3", "'S[p] = (Q[p, e]' on line 3 and "
                                                      "'** 2)' on line 6"),
    ("S[p] = Q[p, e] where p < 2\n    and e < 3", "4:5",
     "'S[p] = Q[p, e] where (p < 2' on line 3 and 'and e < 3)' on line 4"),
    ("S[p] = Q[p, e] where p <=\n    2", "3:24",
     "'S[p] = Q[p, e] where (p <=' on line 3 and '2)' on line 4"),
    ("S[p] = (Q[p, e]\n        * 2)\n    - 1", "5:5", None),
])
def test_continuation_shapes(lines, position, wrapped):
    text = error_of(f"dims P, E\ninput Q[p, e]\n{lines}\noutput S\n")
    assert text.startswith(f"<spec>:{position}: error: ")
    hint = text.splitlines()[-1]
    assert hint == (f"{CONTINUE}: {wrapped}" if wrapped else CONTINUE)


def test_an_operand_missing_before_a_new_statement_keeps_its_hint():
    text = error_of("dims P, E\ninput Q[p, e]\nS[p] = Q[p, e] +\noutput S\n")
    assert "unexpected end of the line" in text
    assert "parentheses" not in text and "expected a value here" in text


@pytest.mark.parametrize("lines", [
    "S[p] = (Q[p, e]\n    + 1)",
    "S[p] = (Q[p, e] +\n    1)",
    "S[p] = Q[p, e] where (p < 2\n    and e < 3)",
])
def test_a_parenthesised_continuation_parses(lines):
    cascade = load(f"dims P, E\ninput Q[p, e]\n{lines}\noutput S\n")
    assert cascade.einsum("S").reduced == ("e",)


def test_the_command_line_exits_2_on_a_continuation(tmp_path, capsys):
    path = spec_file(tmp_path, "dims P, E\ninput Q[p, e]\nS[p] = Q[p, e]\n    * 2\n"
                               "output S\n")
    assert main(["parse", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4:5: error: unexpected '*' at the start of a line" in err
    assert "wrap the expression in parentheses" in err
