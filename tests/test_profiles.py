"""Hypothesis profiles (tests/conftest.py): the default "ci" profile draws the same cases
on every run, so CI passes or fails by the code alone; "thorough" draws fresh cases,
every property test's count scaled up."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

# A property test outside pytest, under the project's profiles: prints what it drew.
_PROBE = """
import sys

import pytest
sys.path.insert(0, {tests!r})
import conftest
from hypothesis import given, settings, strategies as st
if len(sys.argv) > 1:
    settings.load_profile(sys.argv[1])
drawn = []

@settings(max_examples=conftest.examples(5) if hasattr(conftest, "examples") else 5)
@given(st.integers())
def probe(x):
    drawn.append(x)

probe()
print(drawn)
"""


def _draws(tmp_path, *profile, scale="3"):
    script = tmp_path / "probe.py"
    script.write_text(_PROBE.format(tests=str(ROOT / "tests")))
    result = subprocess.run([sys.executable, str(script), *profile], capture_output=True,
                            text=True, cwd=tmp_path, check=True,
                            env={**os.environ, "EINSUMATTN_THOROUGH_SCALE": scale,
                                 "TRITON_INTERPRET": "1"})  # conftest skips torch
    return result.stdout.strip()


def test_the_default_profile_draws_the_same_cases_every_run(tmp_path):
    first = _draws(tmp_path)
    assert first.count(",") == 4                      # the test's own count, 5
    assert all(_draws(tmp_path) == first for _ in range(2))


def test_the_thorough_profile_draws_fresh_cases_scaled(tmp_path):
    first = _draws(tmp_path, "thorough")
    assert first.count(",") == 5 * 3 - 1              # 5 times EINSUMATTN_THOROUGH_SCALE
    assert _draws(tmp_path, "thorough") != first


@pytest.mark.slow
def test_the_profile_option_scales_the_project_property_tests(tmp_path):
    """`--hypothesis-profile=thorough` (the README's command) is loaded before the test
    modules define their counts."""
    def passing(*option):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *option,
             "--hypothesis-show-statistics", "tests/test_properties.py", "-k",
             "test_render_round_trip"], capture_output=True, text=True, cwd=ROOT,
            env={**os.environ, "EINSUMATTN_THOROUGH_SCALE": "2"})
        assert result.returncode == 0, result.stdout[-3000:]
        # "30 passing examples" (hypothesis < 6.16x), "30 passing, 0 failing" (newer)
        return int(re.search(r"(\d+) passing\b", result.stdout).group(1))

    assert passing() == 30
    assert passing("--hypothesis-profile=thorough") == 60
