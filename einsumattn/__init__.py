"""einsumattn: a compiler for attention variants written as cascades of Einsums.

    cascade = einsumattn.load("examples/softmax_3pass.attn")
    outputs = einsumattn.evaluate(cascade, {"Q": q, "K": k, "V": v})
"""

from __future__ import annotations

import importlib
import sys
import types

# First, so that submodules can import it while the package initialises.
__version__ = "0.1.0"

# The public names and the submodule each comes from. They are imported on first use
# (PEP 562), so `import einsumattn` and `einsumattn --help` do not pay for sympy,
# lark, numpy and jinja2 (docs/compile-speed.md).
_EXPORTS = {"load": "loader", "read_spec": "loader", "evaluate": "evaluate",
            "analyze": "analysis", "compile": "codegen", "Cascade": "ir",
            "SpecError": "diagnostics", "SpecWarning": "diagnostics",
            "BindError": "diagnostics"}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'einsumattn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value      # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """`einsumattn.evaluate` is the function even after its submodule loads: importing
    `einsumattn.evaluate` (the module) sets the package's attribute of that name, which
    an eager `from .evaluate import evaluate` used to overwrite again."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
