"""einsumattn: a compiler for attention variants written as cascades of Einsums.

    cascade = einsumattn.load("examples/softmax_3pass.attn")
    outputs = einsumattn.evaluate(cascade, {"Q": q, "K": k, "V": v})
"""

from __future__ import annotations

from .analysis import analyze
from .diagnostics import BindError, SpecError
from .evaluate import evaluate
from .ir import Cascade
from .loader import load, read_spec

__version__ = "0.1.0"

__all__ = ["load", "read_spec", "evaluate", "analyze", "Cascade", "SpecError", "BindError",
           "__version__"]
