import os
import pathlib

# Without a GPU, Triton kernels run in Triton's interpreter (set before triton is imported).
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    return ROOT


# The sliding-window example without its sink keys: a window on both sides of the diagonal.
WINDOW = (ROOT / "examples" / "sliding_window_sinks.attn").read_text().replace(
    "where m <= p and (p - m < W or m < S)", "where m <= p and p - m < W").replace(
    "attention sliding_window_sinks", "attention sliding_window")
