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
