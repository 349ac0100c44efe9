"""`einsumattn bench` (issue 17, item 4) and the long commands' progress and summaries
(item 5): the bench's table, JSON and plot on the CPU at small sizes; only peers that
agree with the module are timed; `check --json`; the progress bar on a terminal only."""

from __future__ import annotations

import io
import json

import pytest

import einsumattn.cli as cli
from einsumattn import progress
from einsumattn.codegen import generate

from conftest import ROOT, load_generated

EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EINSUMATTN_CACHE_DIR", str(tmp_path / "cache"))


def _bench(tmp_path, spec: str, *extra: str) -> dict:
    out = tmp_path / "out"
    assert cli.main(["bench", str(EXAMPLES / spec), "--lengths", "16,32", "--repeats", "2",
                     "--shape", "H=2,E=8,F=8", "-o", str(out), *extra]) == 0
    name = spec.removesuffix(".attn")
    data = json.loads((out / f"{name}.json").read_text())
    data["markdown"] = (out / f"{name}.md").read_text()
    data["png"] = (out / f"{name}.png").read_bytes()
    return data


def test_bench_writes_the_table_json_and_plot(tmp_path, capsys):
    data = _bench(tmp_path, "causal_softmax.attn")
    timed = {r["implementation"] for r in data["rows"]}
    # The causal peer agrees and is timed; plain SDPA computes something else and is
    # left out, with the reason.
    assert timed == {"einsumattn torch", "reference", "SDPA causal"}
    assert any(n.startswith("SDPA: computes something else") for n in data["notes"])
    assert [r["length"] for r in data["rows"]] == [16] * 3 + [32] * 3
    assert all(r["ms"] > 0 and r["tflops"] > 0 and r["gbps"] > 0 for r in data["rows"])
    assert data["sizes"] == {"B": 1, "H": 2, "P": "length", "M": "length", "E": 8, "F": 8}
    assert data["device"].startswith("CPU") and data["dtype"] == "float32"
    assert data["png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert "| length | implementation | ms | TFLOP/s | GB/s | vs best peer |" in \
        data["markdown"]
    assert "| 32 | einsumattn torch |" in data["markdown"]
    assert data["markdown"] in capsys.readouterr().out


def test_bench_keeps_sdpa_for_grouped_query_heads(tmp_path):
    """GQA: SDPA with enable_gqa computes the spec (its non-causal form is kept, the
    causal one is not)."""
    data = _bench(tmp_path, "gqa.attn", "--shape", "H=4,KH=2,E=8,F=8")
    assert {r["implementation"] for r in data["rows"]} == \
        {"einsumattn torch", "reference", "SDPA"}


def test_bench_names_the_linear_recurrences_peer(tmp_path):
    """GLA's recurrence: SDPA is no peer (four inputs); flash-linear-attention is, where
    installed (its kernels need a GPU), and the notes say what became of it."""
    import importlib.util

    data = _bench(tmp_path, "gla.attn", "--shape", "H=2,D=8,F=8")
    assert {r["implementation"] for r in data["rows"]} == {"einsumattn torch", "reference"}
    fla = [n for n in data["notes"] if "fla" in n or "flash-linear-attention" in n]
    if importlib.util.find_spec("fla") is None:
        assert fla == ["flash-linear-attention: the peer for linear recurrences, "
                       "not installed"]
    else:
        assert fla


def test_bench_refuses_a_rank_the_spec_does_not_have(tmp_path, capsys):
    assert cli.main(["bench", str(EXAMPLES / "softcap.attn"), "--shape", "KH=2",
                     "-o", str(tmp_path)]) == cli.EXIT_USER
    assert "--shape: KH is not a rank of softcap" in capsys.readouterr().err


def test_check_json_summarises_every_verdict(tmp_path):
    path = tmp_path / "ci" / "check.json"
    assert cli.main(["check", str(EXAMPLES / "softcap.attn"), "--backend", "torch",
                     "--examples", "4", "--json", str(path)]) == 0
    summary = json.loads(path.read_text())
    assert summary["ok"] is True and summary["smallest_failing_case"] is None
    assert summary["backends"] == ["torch"] and summary["attention"] == "softcap"
    assert summary["counts"]["ok"] >= 4 and summary["counts"]["MISMATCH"] == 0
    checks = {(v["backend"], v["check"]) for v in summary["verdicts"]}
    assert ("torch", "outputs") in checks and ("torch", "gradients") in checks


def test_check_json_names_the_smallest_failing_case(tmp_path, monkeypatch):
    """A wrong module (its normalisation off by 1e-3) fails: the summary says so, with
    the smallest case hypothesis found."""
    import sys

    import einsumattn

    # (the package's `compile` function hides the submodule of that name)
    compile_module = sys.modules["einsumattn.codegen.compile"]

    cascade = einsumattn.load(EXAMPLES / "softmax_3pass.attn")
    wrong = load_generated(generate(cascade).replace(
        "A_ = SN_ / SD_[:, :, :, None]", "A_ = SN_ / (SD_[:, :, :, None] + 1e-3)"), "wrong")
    monkeypatch.setattr(compile_module, "compile", lambda *a, **k: wrong)
    path = tmp_path / "check.json"
    assert cli.main(["check", str(EXAMPLES / "softmax_3pass.attn"), "--backend",
                     "reference", "--examples", "20", "--json", str(path)]) == \
        cli.EXIT_INTERNAL
    summary = json.loads(path.read_text())
    assert summary["ok"] is False and summary["counts"]["MISMATCH"] >= 1
    assert summary["smallest_failing_case"].startswith(
        "reference: sizes B=1,H=1,P=1,M=1,E=1,F=1")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_is_drawn_on_a_terminal_only():
    terminal = _Terminal()
    with progress.bar(3, "softcap: check", stream=terminal) as shown:
        shown.set_description("softcap: sizes B=1")
        shown.update()
        shown.write("  torch  ok")
    assert "softcap: sizes B=1" in terminal.getvalue()
    assert "/3 " in terminal.getvalue()       # the count of cases it will try
    log = io.StringIO()                       # a log file, a pipe in CI: no bar
    assert type(progress.bar(3, "x", stream=log)) is progress.Quiet
