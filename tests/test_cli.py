"""The einsumattn command: parse and eval output, exit codes, and packaging."""

import os
import re
import subprocess
import sys
import zipfile

import pytest

from einsumattn import cli
from einsumattn.cli import main

from conftest import BENCHMARK_DEVICE, EXAMPLES, ROOT, kernels_env


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


def test_the_layout_keeps_grammars_and_templates_at_the_top_level():
    """The project's layout: grammars/ and templates/ beside einsumattn/, not in it; the
    package list in pyproject.toml is every package folder, plus the two mapped in."""
    import tomllib

    from einsumattn.resources import FOLDERS, folder
    assert all((ROOT / name).is_dir() and not (ROOT / "einsumattn" / name).exists()
               for name in FOLDERS)
    assert folder("grammars") == ROOT / "grammars"
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.relative_to(ROOT).parts)
             for p in (ROOT / "einsumattn").rglob("__init__.py") for p in [p.parent]}
    assert set(config["packages"]) == found | {f"einsumattn.{n}" for n in FOLDERS}
    assert config["package-dir"] == {f"einsumattn.{n}": n for n in FOLDERS}


@pytest.mark.slow
def test_wheel_ships_the_grammar_and_templates(tmp_path):
    # An install from a wheel must find the grammar, its tables and the template.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("einsumattn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"einsumattn/grammars/attn.lark", "einsumattn/grammars/attn.lalr",
            "einsumattn/templates/module.py.j2",
            "einsumattn/backends/module_template.py"} <= set(names)
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    # The installed copy parses a spec from outside the source tree, and reads its
    # compiled module template (backends/templates.py).
    code = ("import einsumattn, sys; assert 'site' in einsumattn.__file__; "
            "from einsumattn.backends import templates\n"
            "env = templates.template_environment()\n"
            "key = templates.template_key(env, templates.template_text())\n"
            "assert templates.read_shipped(env, key) is not None\n"
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


def test_decoding_benchmark_runs(tmp_path):
    """benchmarks/decoding.py (split-KV against one split and SDPA) is for GPU sessions;
    its smoke mode runs both forms in the interpreter and checks them against SDPA."""
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decoding.py"),
                             "--smoke", "--device", "cpu", "--out-dir", str(tmp_path),
                             "--json", str(out)], capture_output=True, text=True,
                            env={**__import__("os").environ, "TRITON_INTERPRET": "1",
                                 "EINSUMATTN_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    import json
    rows = json.loads(out.read_text())
    assert [r["splits"] for r in rows] == [2, 1]
    assert all(r["max_diff_vs_sdpa"] < 1e-5 for r in rows)


def test_the_command_collects_less_garbage(monkeypatch):
    """As the process's command (no argv), main() has gc.freeze run at exit, before
    Python's finalization collects every object, and collects its youngest generation
    less often (cli.collect_less_garbage); a call from Python with argv leaves the
    process's collector alone."""
    import atexit
    import gc

    registered = []
    monkeypatch.setattr(atexit, "register", lambda function, *args, **kwargs:
                        registered.append(function))
    thresholds = gc.get_threshold()
    monkeypatch.setattr(gc, "set_threshold", lambda *values: registered.append(values))
    assert main(["parse", str(EXAMPLES[0])]) == 0
    assert cli._skip_final_collection not in registered
    assert not any(isinstance(r, tuple) for r in registered)
    monkeypatch.setattr(sys, "argv", ["einsumattn", "parse", str(EXAMPLES[0])])
    assert main() == 0
    assert cli._skip_final_collection in registered
    assert (10000, *thresholds[1:]) in registered


def test_no_freeze_at_exit_once_triton_is_loaded(monkeypatch):
    """Triton's extension reports every object of its own still alive at exit as
    "leaked" (hundreds of lines after `einsumattn check`): the freeze that skips the
    final collection is left out once Triton was imported."""
    import gc

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    for name in [n for n in sys.modules if n.startswith("triton")]:
        monkeypatch.delitem(sys.modules, name)
    cli._skip_final_collection()
    assert frozen == [True]
    monkeypatch.setitem(sys.modules, "triton", object())
    cli._skip_final_collection()
    assert frozen == [True]


def test_compile_time_breakdown_names_every_part(tmp_path):
    """benchmarks/compile_time.py --breakdown: each import phase, then the work, which
    compiles (no timing is asserted: the machine decides those)."""
    out = tmp_path / "parts.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_time.py"),
                             "--breakdown", str(EXAMPLES[0]), "--runs", "1",
                             "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import json
    parts = json.loads(out.read_text())["breakdown"]
    names = list(parts["phases_s"])
    assert names[:4] == ["python start (python -c pass)",
                         "import einsumattn.cli (argparse, diagnostics)", "import sympy",
                         "import sympy.tensor.tensor"]
    assert "import einsumattn.frontend" in names and names[-2].startswith("work")
    assert names[-1].startswith("the rest of")
    # Each part is a difference of medians of separate processes: on a busy machine one
    # (most often "the rest") can come out below zero, so only finiteness is asserted.
    import math
    assert all(math.isfinite(seconds) for seconds in parts["phases_s"].values())
    assert parts["dataclasses"] > 0 and "work" in result.stdout


def test_benchmark_times_tuning_variants_of_the_fused_kernel(tmp_path):
    """--tune adds rows for TUNING_FUSED overrides (a GPU session sweeps tiles in one
    call); here in the interpreter, where only the plumbing and the outputs count."""
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention.py"),
                             "--smoke", *BENCHMARK_DEVICE, "--specs",
                             "causal_softmax", "--unfused-max", "0", "--tune", "p__BLOCK=32",
                             "--json", str(out)], capture_output=True, text=True,
                            env=kernels_env(EINSUMATTN_CACHE_DIR=str(tmp_path / "cache")))
    assert result.returncode == 0, result.stderr
    import json
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    assert {"einsumattn triton", "einsumattn triton p__BLOCK=32"} <= set(rows)
    assert rows["einsumattn triton p__BLOCK=32"]["max_diff_vs_peer"] < 1e-5


def _exit_code_and_stderr(args, capsys) -> tuple[int, str]:
    """Run the command in process: its exit status (argparse's errors exit by SystemExit)
    and its stderr."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def _many_ranks_spec(folder, ranks: int, extra_reduced: int = 0):
    """Y = sigmoid(X) over `ranks` ranks, optionally times a sum over more ranks (which
    only the Einsum's iteration space holds)."""
    dims = [f"D{i}" for i in range(ranks + extra_reduced)]
    left = ", ".join(d.lower() for d in dims[:ranks])
    text = f"dims {', '.join(dims)}\ninput X[{left}]\n"
    if extra_reduced:
        text += f"input Z[{', '.join(d.lower() for d in dims[ranks:])}]\n"
        text += f"Y[{left}] = X[{left}] * Z[{', '.join(d.lower() for d in dims[ranks:])}]\n"
    else:
        text += f"Y[{left}] = sigmoid(X[{left}])\n"
    path = folder / f"ranks{ranks}_{extra_reduced}.attn"
    path.write_text(text + "output Y\n")
    shapes = ",".join(f"{d}=1" for d in dims)
    return str(path), shapes


@pytest.mark.parametrize("case", [
    "compile -o a file", "compile -o inside a file", "analyze -o a folder",
    "rewrite -o a folder", "analyze -o inside a file", "check --examples 0",
    "check --examples -3", "eval --seed -1", "eval 65 ranks", "eval 33 ranks",
    "eval 33 index variables", "check 33 ranks", "analyze -o a full disk"])
def test_argument_errors_exit_2_with_what_to_do(case, tmp_path, capsys, monkeypatch):
    if case.endswith("full disk") and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("EINSUMATTN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "file").write_text("")
    spec = "examples/gqa.attn"
    args, message = {
        "compile -o a file": (["compile", spec, "-o", str(tmp_path / "file")],
                              "is a file; -o takes the folder to write <name>.py into"),
        "compile -o inside a file": (["compile", spec, "-o", str(tmp_path / "file" / "x")],
                                     "is a file, so no folder"),
        "analyze -o a folder": (["analyze", spec, "-o", str(tmp_path)],
                                "is a folder; -o takes the path of the file to write"),
        "rewrite -o a folder": (["rewrite", spec, "-o", str(tmp_path)],
                                "is a folder; -o takes the path of the file to write"),
        "analyze -o inside a file": (["analyze", spec, "-o", str(tmp_path / "file" / "r.txt")],
                                     "is a file, not a folder, so it cannot hold"),
        "check --examples 0": (["check", spec, "--examples", "0"],
                               "--examples: give a whole number of 1 or more, not '0'"),
        "check --examples -3": (["check", spec, "--examples", "-3"],
                                "give a whole number of 1 or more, not '-3'"),
        "eval --seed -1": (["eval", spec, "--seed", "-1"],
                           "--seed: give a whole number of 0 or more, not '-1'"),
        "eval 65 ranks": (["eval", *_eval_args(tmp_path, 65)],
                          "tensor X has 65 ranks: the float64 oracle evaluates at most 32"),
        "eval 33 ranks": (["eval", *_eval_args(tmp_path, 33)],
                          "tensor X has 33 ranks: the float64 oracle evaluates at most 32"),
        "eval 33 index variables": (
            ["eval", *_eval_args(tmp_path, 30, 3)],
            "the Einsum of Y has 33 index variables: the float64 oracle evaluates at most 32"),
        "check 33 ranks": (["check", _many_ranks_spec(tmp_path, 33)[0], "--examples", "1"],
                           "tensor X has 33 ranks"),
        "analyze -o a full disk": (["analyze", spec, "-o", "/dev/full"],
                                   "cannot write '/dev/full': No space left on device; give "
                                   "-o a file path you can write to"),
    }[case]
    code, err = _exit_code_and_stderr(args, capsys)
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert not (tmp_path / "file").read_text()            # nothing written over the file


def _eval_args(folder, ranks: int, extra_reduced: int = 0) -> list[str]:
    path, shapes = _many_ranks_spec(folder, ranks, extra_reduced)
    return [path, "--shapes", shapes]


def test_eval_takes_as_many_ranks_as_the_oracle_can(tmp_path, capsys):
    """32 ranks, the limit `eval` states, evaluate."""
    assert main(["eval", *_eval_args(tmp_path, 32)]) == 0
    assert "Y        shape (1, 1," in capsys.readouterr().out


def test_output_folders_are_made_if_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EINSUMATTN_CACHE_DIR", str(tmp_path / "cache"))
    spec = str(ROOT / "examples" / "softmax_3pass.attn")
    assert main(["compile", spec, "-o", str(tmp_path / "a" / "b")]) == 0
    assert (tmp_path / "a" / "b" / "softmax_3pass.py").is_file()
    assert main(["rewrite", spec, "-o", str(tmp_path / "c" / "d.attn")]) == 0
    assert (tmp_path / "c" / "d.attn").read_text().startswith("#")


def test_a_folder_that_cannot_be_written_exits_2(tmp_path, capsys, monkeypatch):
    """An unwritable -o folder (simulated: chmod does not stop root) is the user's to fix,
    and so is an unwritable compile cache for `check`."""
    real_open = os.open

    def refuse(path, *args, **kwargs):     # the generated files' temporary names
        if str(path).endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    monkeypatch.setenv("EINSUMATTN_CACHE_DIR", str(tmp_path / "cache"))
    spec = str(ROOT / "examples" / "softmax_3pass.attn")
    code, err = _exit_code_and_stderr(["compile", spec, "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert re.search(f"cannot write '{re.escape(str(tmp_path / 'out'))}/\\.softmax_3pass\\.py\\."
                     f"[0-9a-f]+\\.tmp': Permission denied; give -o a folder you can write to",
                     err), err
    code, err = _exit_code_and_stderr(["check", spec, "--backend", "torch", "--examples", "1"],
                                      capsys)
    assert code == 2 and "set EINSUMATTN_CACHE_DIR to a folder you can write to" in err, err


def test_os_errors_on_other_paths_stay_internal_errors(tmp_path):
    """Only the user's own path makes an OS error the user's: a missing template, say,
    is still einsumattn's bug."""
    from einsumattn.cli import UsageError, _writing_to

    with pytest.raises(UsageError, match="Permission denied; advice"):
        with _writing_to(tmp_path / "out", "advice"):
            raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "x.py"))
    with pytest.raises(FileNotFoundError):
        with _writing_to(tmp_path / "out", "advice"):
            raise FileNotFoundError(2, "No such file", "/somewhere/else/template.j2")


def test_eval_refuses_past_the_memory_limit_before_making_inputs(monkeypatch, capsys):
    """The memory estimate runs before eval draws its random inputs (a 275 GB case must
    not start allocating): drawing them here fails the test."""
    import numpy as np

    def no_inputs(*args, **kwargs):
        raise AssertionError("eval drew its inputs before checking the memory it needs")

    monkeypatch.setenv("EINSUMATTN_EVAL_MEMORY", "32M")
    monkeypatch.setattr(np.random, "default_rng", no_inputs)
    code = main(["eval", str(ROOT / "examples" / "softmax_3pass.attn"), "--shapes",
                 "B=64,H=64,P=4096,M=4096,E=128,F=128"])
    assert code == 2
    assert "more than the limit of 32 MiB" in capsys.readouterr().err


def test_benchmark_times_a_training_step(tmp_path):
    """--train times forward + backward through the backward's kernels (compiled with
    train=True) and the peers' autograd, checking dQ against the peer's."""
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention.py"),
                             "--smoke", *BENCHMARK_DEVICE, "--specs", "causal_softmax",
                             "--unfused-max", "0", "--train", "--json", str(out)],
                            capture_output=True, text=True,
                            env=kernels_env(EINSUMATTN_CACHE_DIR=str(tmp_path / "cache")))
    assert result.returncode == 0, result.stderr
    import json
    rows = {r["backend"]: r for r in json.loads(out.read_text())}
    assert rows["einsumattn triton"]["step"] == "forward+backward"
    assert rows["einsumattn triton"]["max_diff_vs_peer"] < 1e-5
    assert "timed: forward+backward" in result.stdout
