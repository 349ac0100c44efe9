"""The CLI on hostile input: every run exits 0 (a valid spec) or 2 (a spec error, with a
diagnostic on stderr), never with a Python traceback, and finishes in reasonable time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TIME_LIMIT = 60.0

VALID_SPEC = """attention tiny
dims M
input X[m]
Y = sum[m] X[m] * X[m]
output Y
"""


def run_cli(*args: str | os.PathLike, timeout: float = TIME_LIMIT * 2,
            extra_env: dict | None = None):
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "einsumattn", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, timeout=timeout)
    elapsed = time.monotonic() - start
    return proc, elapsed


def assert_clean(proc, elapsed, allowed=(0, 2), what=""):
    stderr = proc.stderr.decode("utf-8", errors="replace")
    stdout = proc.stdout.decode("utf-8", errors="replace")
    assert "Traceback" not in stderr, f"{what}: traceback on stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stdout, f"{what}: traceback on stdout:\n{stdout[-3000:]}"
    assert proc.returncode in allowed, \
        f"{what}: exit {proc.returncode}, expected {allowed}\n{stderr[-3000:]}"
    if proc.returncode == 2:
        assert "error" in stderr, f"{what}: exit 2 without a diagnostic:\n{stderr[-3000:]}"
        assert len(stderr) < 20_000, f"{what}: diagnostic of {len(stderr)} characters"
    assert elapsed < TIME_LIMIT, f"{what}: took {elapsed:.1f} s"


def parse_file(path, allowed=(0, 2), what="", located=True):
    """Run `parse` on `path`. located: a diagnostic (exit 2) must name the file, as
    `FILE: error:` or `FILE:LINE:COL: error:` (LANGUAGE.md, "Errors")."""
    proc, elapsed = run_cli("parse", path)
    assert_clean(proc, elapsed, allowed, what or Path(path).name)
    if located:
        assert_located(proc, path, what)
    return proc


def assert_located(proc, path, what=""):
    if proc.returncode == 2:
        stderr = proc.stderr.decode("utf-8", errors="replace")
        assert re.search(re.escape(str(path)) + r"(:\d+:\d+)?: error: ", stderr), \
            f"{what or Path(path).name}: the diagnostic does not name the file:\n" \
            f"{stderr[:2000]}"


def test_valid_spec_exits_0(tmp_path):
    f = tmp_path / "tiny.attn"
    f.write_text(VALID_SPEC)
    parse_file(f, allowed=(0,))


def test_empty_file(tmp_path):
    f = tmp_path / "empty.attn"
    f.write_text("")
    parse_file(f, allowed=(2,))


def test_binary_junk_with_nul(tmp_path):
    f = tmp_path / "junk.attn"
    rng = __import__("random").Random(1234)
    data = bytes(rng.randrange(256) for _ in range(20_000)) + b"\x00\x00\xff\xfe"
    f.write_bytes(data)
    parse_file(f, allowed=(2,))


def test_binary_junk_invalid_utf8_no_nul(tmp_path):
    f = tmp_path / "latin.attn"
    f.write_bytes(b"dims M\ninput X[m]\nY = X[m] \xe9\xff\xfe\n")
    parse_file(f, allowed=(2,))


def test_nonexistent_file(tmp_path):
    proc = parse_file(tmp_path / "does_not_exist.attn", allowed=(2,), located=False)
    assert "does_not_exist.attn" in proc.stderr.decode()


def test_directory(tmp_path):
    d = tmp_path / "a_dir.attn"
    d.mkdir()
    proc = parse_file(d, allowed=(2,), located=False)
    assert "a_dir.attn" in proc.stderr.decode()


def test_deep_parentheses(tmp_path):
    f = tmp_path / "deep.attn"
    f.write_text("dims M\ninput a\nY = " + "(" * 10_000 + "a" + ")" * 10_000 + "\noutput Y\n")
    parse_file(f, allowed=(2,))


def test_deep_brackets_unclosed(tmp_path):
    f = tmp_path / "unclosed.attn"
    f.write_text("Y = " + "[(" * 5_000 + "\n")
    parse_file(f, allowed=(2,))


def test_long_sum_chain(tmp_path):
    f = tmp_path / "chain.attn"
    f.write_text("input a\nY = " + " + ".join(["a"] * 100_000) + "\noutput Y\n")
    parse_file(f)


def test_long_product_chain_eval(tmp_path):
    """The same kind of chain through the later stages (checking, the oracle): a deep
    left-leaning expression tree must not hit Python's recursion limit."""
    f = tmp_path / "chain.attn"
    f.write_text("dims M\ninput a[m]\nY[m] = " + " * ".join(["a[m]"] * 20_000)
                 + "\noutput Y\n")
    proc, elapsed = run_cli("eval", f, "--shapes", "M=2")
    assert_clean(proc, elapsed, what="eval of a 20k-term product")
    assert_located(proc, f, "eval of a 20k-term product")


def test_unary_minus_chain(tmp_path):
    f = tmp_path / "minus.attn"
    f.write_text("input x\nY = " + "- " * 5_000 + "x\noutput Y\n")
    parse_file(f)


def test_power_tower(tmp_path):
    f = tmp_path / "pow.attn"
    f.write_text("input x\nY = " + "x ** " * 5_000 + "x\noutput Y\n")
    parse_file(f)


def test_not_chain_in_filter(tmp_path):
    f = tmp_path / "not.attn"
    f.write_text("dims M\ninput X[m]\nY = X[m] where " + "not " * 5_000 + "m < 2\n"
                 "output Y\n")
    parse_file(f)


def test_very_long_line_error(tmp_path):
    """A 1 MB line with an error at its end: the diagnostic stays readable."""
    f = tmp_path / "longline.attn"
    f.write_text("input a\nY = " + "a + " * 250_000 + "$\noutput Y\n")
    parse_file(f, allowed=(2,))


def test_many_statements(tmp_path):
    lines = ["dims M", "input T0[m]"]
    lines += [f"T{i + 1}[m] = T{i}[m] * 0.5 + 1" for i in range(2_000)]
    lines.append("output T2000")
    f = tmp_path / "many.attn"
    f.write_text("\n".join(lines) + "\n")
    parse_file(f, allowed=(0,))


@pytest.mark.slow
def test_ten_megabytes_of_text(tmp_path):
    f = tmp_path / "big.attn"
    words = ("the quick brown fox jumps over the lazy dog; attention is all you need! "
             "Q K V softmax (exp) [sum] {max} 1.5e3 <= >= == -> ")
    f.write_text((words * (10 * 2**20 // len(words) + 1))[:10 * 2**20])
    parse_file(f, allowed=(2,))


@pytest.mark.slow
def test_ten_megabytes_of_text_with_newlines(tmp_path):
    f = tmp_path / "big_lines.attn"
    line = "QK[b, h, p, m] = Q[b, h, p, e] * K[b, h, m, e] * scale ( foo bar\n"
    f.write_text(line * (10 * 2**20 // len(line)))
    parse_file(f, allowed=(2,))


@pytest.mark.slow
def test_ten_megabytes_of_comments_then_valid_spec(tmp_path):
    """Past the 1 MiB size limit, comments or not (docs/language.md, 2.14 Limits)."""
    f = tmp_path / "comments.attn"
    line = "# softmax attention: QK[b, h, p, m] = Q[b, h, p, e] * K[b, h, m, e]\n"
    f.write_text(line * (10 * 2**20 // len(line)) + VALID_SPEC)
    proc = parse_file(f, allowed=(2,))
    assert "larger than the limit of 1 MiB" in proc.stderr.decode()


@pytest.mark.slow
def test_ten_megabytes_of_comments_only(tmp_path):
    f = tmp_path / "only_comments.attn"
    line = "# nothing but a comment, over and over again\n"
    f.write_text(line * (10 * 2**20 // len(line)))
    parse_file(f, allowed=(2,))


# ------------------------------------------------------------------ resource bounds

SIZE_LIMIT = 2**20


def test_dev_zero_is_refused_at_once():
    """A character device that never ends: read only to the size limit."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    proc = parse_file("/dev/zero", allowed=(2,))
    assert "larger than the limit of 1 MiB" in proc.stderr.decode()


def test_a_file_past_the_size_limit_is_refused_with_a_position(tmp_path):
    f = tmp_path / "big.attn"
    f.write_bytes(b"# c\n" * (SIZE_LIMIT // 4) + VALID_SPEC.encode())
    proc = parse_file(f, allowed=(2,))
    stderr = proc.stderr.decode()
    # 1 MiB of 4-byte lines: the first byte past it starts line 262145.
    assert f"{f}:{SIZE_LIMIT // 4 + 1}:1: error: the spec is larger than the limit" in stderr


def test_a_file_at_the_size_limit_is_read(tmp_path):
    padding = SIZE_LIMIT - len(VALID_SPEC.encode())
    f = tmp_path / "at_limit.attn"
    f.write_bytes(b"#" * (padding - 1) + b"\n" + VALID_SPEC.encode())
    assert f.stat().st_size == SIZE_LIMIT
    parse_file(f, allowed=(0,))


def test_eval_refuses_a_case_past_the_memory_limit(tmp_path):
    proc, elapsed = run_cli("eval", REPO / "examples" / "softmax_3pass.attn", "--shapes",
                            "B=1,H=1,P=128,M=128,E=128,F=128",
                            extra_env={"EINSUMATTN_EVAL_MEMORY": "32M"})
    assert_clean(proc, elapsed, allowed=(2,), what="eval past the memory limit")
    stderr = proc.stderr.decode()
    assert "more than the limit of 32 MiB" in stderr
    assert "the iteration space of QK (b, h, p, m, e)" in stderr
    assert "EINSUMATTN_EVAL_MEMORY" in stderr

