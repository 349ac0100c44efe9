"""Code generation: a Cascade -> a self-contained Python module (torch reference backend,
and Triton kernels as they land), plus compiling, caching and importing it.

module.py         the module's source, from templates/module.py.j2
torch_backend.py  the reference backend: one torch block per Einsum
printers.py       IR expressions as Python / torch source
names.py          the spec's names in generated code: a namespace of their own
compile.py        compile(), the cache, atomic writes
"""

from .compile import compile, compile_to_file
from .module import generate

__all__ = ["compile", "compile_to_file", "generate"]
