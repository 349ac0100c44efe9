"""docs/zoo.md's table states, per example, the streamed rank, its passes before and
after the rewrites, and the fused schedule's kernels: each checked here against the
compiler, and every example must have a row."""

from __future__ import annotations

import re

import pytest

import einsumattn
from einsumattn.analysis import analyze
from einsumattn.codegen import compile_to_file
from einsumattn.codegen.compile import import_file
from einsumattn.transform import rewrite

from conftest import EXAMPLES, ROOT

ROW = re.compile(r"^\| (\w+) \| [^|]+ \| (\w+) \| (\d+) → (\d+) \| (\d+)( unfused)? \| [^|]+ \|$")


def _rows() -> dict[str, tuple[str, int, int, int, bool]]:
    rows = {}
    for line in (ROOT / "docs" / "zoo.md").read_text().splitlines():
        found = ROW.match(line)
        if found:
            name, rank, before, after, kernels, unfused = found.groups()
            rows[name] = rank, int(before), int(after), int(kernels), bool(unfused)
    return rows


def test_every_example_has_a_row():
    assert sorted(_rows()) == sorted(p.stem for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_row_says_what_the_compiler_does(path, tmp_path):
    rank, before, after, kernels, unfused = _rows()[path.stem]
    derived = rewrite(path)
    assert analyze(derived.original).primary_rank == rank
    assert analyze(derived.original).ranks[rank].passes == before
    assert analyze(derived.cascade).ranks[rank].passes == after
    module = import_file(compile_to_file(path, tmp_path), f"zoo_{path.stem}")
    schedule = module.SCHEDULE
    assert module.TRITON_FALLBACK is None
    if unfused:       # no fused schedule: one kernel per Einsum, and the reason why
        assert not schedule["kernels"] and schedule["not_fused"]
        assert len(schedule["unfused"]) == kernels
    else:
        assert len(schedule["kernels"]) == kernels
        # More than one kernel comes with the scheduler's reason.
        assert (kernels > 1) == (schedule["cut"] is not None)
