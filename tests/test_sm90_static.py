"""benchmarks/sm90_static.py: issue 12's static H100 report. Its verdicts are checked on
made-up rows; one case runs end to end where the shared sm90 tool is present."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("sm90_static", ROOT / "benchmarks" / "sm90_static.py")
sm90_static = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(sm90_static)

TUTORIAL = {"tma": {"norm": 2080}, "ptr": {"norm": 2024}}


def row(**changes):
    base = {"mma": "wgmma", "spill_store": 0, "spill_load": 0, "norm": 2024}
    return {**base, **changes}


def test_the_target_is_against_the_stricter_tutorial_build():
    ratio, misses = sm90_static.verdict(row(norm=2226), TUTORIAL, 1.1)
    assert ratio == pytest.approx(2226 / 2024) and misses == []
    ratio, misses = sm90_static.verdict(row(norm=2240), TUTORIAL, 1.1)
    assert misses == [f"norm {2240 / 2024:.2f}x > 1.1x"]


def test_mma_sync_and_spills_miss_the_target_whatever_the_norm():
    _, misses = sm90_static.verdict(row(mma="mma.sync", spill_store=96, norm=1000), TUTORIAL, 1.1)
    assert misses == ["mma mma.sync", "spills 96/0 B"]


def test_a_row_without_a_norm_misses():
    _, misses = sm90_static.verdict(row(norm=None), TUTORIAL, 1.1)
    assert misses and misses[-1].startswith("norm nan")


def test_each_case_is_compared_with_the_tutorial_doing_the_same_work():
    reference = {f"ref_{b}_d{d}_{k}_{t}": {"label": f"{b}{d}{k}"}
                 for b in ("tma", "ptr") for d, t in sm90_static.TUTORIAL_TILE.items()
                 for k in ("causal", "full")}
    assert sm90_static.tutorial_for(reference, True, 128)["ptr"]["label"] == "ptr128causal"
    assert sm90_static.tutorial_for(reference, False, 64)["tma"]["label"] == "tma64full"
    assert sm90_static.inputs_for("gqa", 64) == "Q=4,16,4096,64 K=4,4,4096,64 V=4,4,4096,64"


@pytest.mark.slow
@pytest.mark.skipif(not sm90_static.DEFAULT_SM90.exists(), reason="the shared sm90 tool is absent")
def test_one_case_end_to_end(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    out, facts = tmp_path / "report.md", tmp_path / "facts.json"
    assert sm90_static.main(["--only", "sigmoid", "--head-dims", "64",
                             "--out", str(out), "--json", str(facts)]) == 0
    (fact,) = json.loads(facts.read_text())
    # The tile the norm is scaled by comes from the module's schedule (row and key knobs).
    assert "p__BLOCKxm__BLOCK" in fact["norm_basis"]
    assert "| sigmoid | 64 | sigmoid_attention__fused |" in out.read_text()
