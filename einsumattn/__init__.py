"""einsumattn: a compiler for attention variants written as cascades of Einsums.

    cascade = einsumattn.load("examples/softmax_3pass.attn")
    outputs = einsumattn.evaluate(cascade, {"Q": q, "K": k, "V": v})
"""

from __future__ import annotations

# First, so that submodules can import it while the package initialises.
__version__ = "0.1.0"

from .analysis import analyze  # noqa: E402
from .codegen import compile
from .diagnostics import BindError, SpecError
from .evaluate import evaluate
from .ir import Cascade
from .loader import load, read_spec


__all__ = ["load", "read_spec", "evaluate", "analyze", "compile", "Cascade", "SpecError", "BindError",
           "__version__"]
