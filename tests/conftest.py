import os
import pathlib

# Without a GPU, Triton kernels run in Triton's interpreter (set before triton is imported).
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Hypothesis profiles (README, "Development").
# - "ci", the default (`.ci/run`, a plain pytest run): derandomized, so every run draws
#   the same cases and a submission passes or fails by its code, never by chance; no
#   example database (nothing an earlier run found on this machine is replayed), and
#   no timing checks (a loaded machine must not fail a test).
# - "thorough" (`--hypothesis-profile=thorough`, before every merge): fresh random cases,
#   every property test's quick count times THOROUGH_SCALE (EINSUMATTN_THOROUGH_SCALE,
#   default 80: 2,000 random cascades per backend in tests/test_codegen.py). A failure
#   it finds becomes an explicit @example of the test.
QUICK_EXAMPLES = 100          # hypothesis's default count; a test's own count scales alike
THOROUGH_SCALE = int(os.environ.get("EINSUMATTN_THOROUGH_SCALE", "80"))
_UNTIMED = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=QUICK_EXAMPLES, derandomize=True,
                          database=None, print_blob=True, **_UNTIMED)
settings.register_profile("thorough", max_examples=QUICK_EXAMPLES * THOROUGH_SCALE,
                          derandomize=False, print_blob=True, **_UNTIMED)
settings.load_profile("ci")   # hypothesis's --hypothesis-profile option loads after this


def examples(quick: int) -> int:
    """max_examples for a property test that tries `quick` cases under the ci profile:
    the same count there, THOROUGH_SCALE times it under the thorough profile. Called
    where the test is defined, after pytest has loaded the profile."""
    return max(1, quick * settings.default.max_examples // QUICK_EXAMPLES)

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    return ROOT


# The sliding-window example without its sink keys: a window on both sides of the diagonal.
WINDOW = (ROOT / "examples" / "sliding_window_sinks.attn").read_text().replace(
    "where m <= p and (p - m < W or m < S)", "where m <= p and p - m < W").replace(
    "attention sliding_window_sinks", "attention sliding_window")
