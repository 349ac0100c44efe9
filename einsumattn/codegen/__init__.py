"""Compiling a spec: generate the module (backends/module.py), write it atomically into
the cache, import it. This is the driver above the pipeline, beside cli.py:

    frontend -> ir -> analysis / transform -> schedule -> backends -> codegen, cli

compile.py  compile(), compile_to_file(), the cache, atomic writes
"""

from .compile import compile, compile_to_file
from ..backends.module import generate

__all__ = ["compile", "compile_to_file", "generate"]
