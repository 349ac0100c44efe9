import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    return ROOT
