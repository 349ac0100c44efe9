"""The einsumattn command: parse and eval output, exit codes, and packaging."""

import subprocess
import sys
import zipfile

import pytest

from einsumattn.cli import main

from conftest import EXAMPLES, ROOT


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_parse_summarises_every_example(path, capsys):
    assert main(["parse", str(path)]) == 0
    out = capsys.readouterr().out
    assert ": ok" in out and "Einsums in dataflow order" in out and "output" in out


def test_parse_summary_shows_resolved_reductions_and_recurrences(capsys):
    main(["parse", str(ROOT / "examples" / "softmax_1pass.attn")])
    out = capsys.readouterr().out
    assert "split    M -> M1, M0: M0 = 16, M1 = ceil(M / M0), m = m1*M0 + m0" in out
    assert "BQK[b, h, p, m1, m0]  = sum[e] Q[b, h, p, e] * K[b, h, m1 * M0 + m0, e]" in out
    assert "recurrence over M1, init -inf" in out


def test_eval_prints_shapes_and_checksums(capsys):
    args = ["eval", str(ROOT / "examples" / "softmax_3pass.attn"),
            "--shapes", "B=1,H=2,P=3,M=5,E=4,F=2", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "AV       shape (1, 2, 3, 2)" in first and "all finite" in first
    main(args)
    assert capsys.readouterr().out == first          # the seed fixes the inputs
    main(args[:-1] + ["4"])
    assert capsys.readouterr().out != first


@pytest.mark.parametrize("args, message", [
    (["eval", "examples/softmax_3pass.attn", "--shapes", "B=1,H=2"], "rank P"),
    (["eval", "examples/softmax_3pass.attn", "--shapes", "B=x"], "not a valid value"),
    (["eval", "examples/softmax_3pass.attn", "--shapes", "B=1,H=1,P=1,M=1,E=1,F=1",
      "--params", "scal=2"], "unknown param 'scal'"),
    (["parse", "no/such/file.attn"], "no/such/file.attn: error: cannot read"),
    (["parse", "not_a_spec.txt"], "not_a_spec.txt: error: cannot read"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_exit_2_with_a_message(args, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) if args[0] == "frobnicate" else _no_raise() as raised:
        code = main(args)
    code = raised.value.code if args[0] == "frobnicate" else code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "einsumattn", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("einsumattn ")


@pytest.mark.slow
def test_wheel_ships_the_grammar_and_templates(tmp_path):
    # An install from a wheel must find grammars/attn.lark (and templates/, later).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("einsumattn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "einsumattn/grammars/attn.lark" in names
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    # The installed copy parses a spec from outside the source tree.
    code = ("import einsumattn, sys; assert 'site' in einsumattn.__file__; "
            "print(einsumattn.load(sys.argv[1]).name)")
    result = subprocess.run([sys.executable, "-c", code, str(EXAMPLES[0])],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(target), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == EXAMPLES[0].stem


def test_benchmark_script_runs(tmp_path):
    """benchmarks/attention.py is for GPU sessions; its smoke mode keeps it runnable."""
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention.py"),
                             "--smoke", "--device", "cpu", "--specs", "causal_softmax",
                             "--json", str(out)], capture_output=True, text=True,
                            env={**__import__("os").environ,
                                 "EINSUMATTN_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert "| causal_softmax | 32 |" in result.stdout and "torch SDPA" in result.stdout
    import json
    rows = json.loads(out.read_text())
    assert all(r["max_diff_vs_peer"] < 1e-5 for r in rows if r["max_diff_vs_peer"] is not None)


def test_benchmark_times_tuning_variants_of_the_fused_kernel(tmp_path):
    """--tune adds rows for TUNING_FUSED overrides (a GPU session sweeps tiles in one
    call); here in the interpreter, where only the plumbing and the outputs count."""
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention.py"),
                             "--smoke", "--device", "cpu", "--interpret", "--specs",
                             "causal_softmax", "--unfused-max", "0", "--tune", "p__BLOCK=32",
                             "--json", str(out)], capture_output=True, text=True,
                            env={**__import__("os").environ, "TRITON_INTERPRET": "1",
                                 "EINSUMATTN_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    import json
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    assert {"einsumattn triton", "einsumattn triton p__BLOCK=32"} <= set(rows)
    assert rows["einsumattn triton p__BLOCK=32"]["max_diff_vs_peer"] < 1e-5
