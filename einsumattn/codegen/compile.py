"""Compiling a spec: generate the module, write it atomically, import it.

Generated files are cached under a key made of the spec text, the options, the
einsumattn version and a hash of the generator's own sources, so recompiling an unchanged spec is an import. Files are written to
a temporary name in the same folder and renamed into place (`os.replace` is atomic), so
two processes compiling the same spec at once both end with a complete file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from .. import __version__
from ..ir import Cascade
from ..loader import load, read_spec
from .module import generate
from ..transform import DEFAULT_TILE


def cache_dir() -> Path:
    """$EINSUMATTN_CACHE_DIR, else $XDG_CACHE_HOME/einsumattn, else ~/.cache/einsumattn."""
    if os.environ.get("EINSUMATTN_CACHE_DIR"):
        return Path(os.environ["EINSUMATTN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "einsumattn"


@functools.lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """A hash of the code that generates modules (the IR, analyses, code generators and
    templates): a changed generator never reuses a module an older one wrote, even
    within one version number (as during development)."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".j2", ".lark") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(text: str, options: dict) -> str:
    material = "\0".join([__version__, generator_fingerprint(), text] +
                          [f"{k}={options[k]!r}" for k in sorted(options)])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:20]


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                         dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def compile_to_file(spec, out_dir: str | os.PathLike, *, rewrite: bool = True,
                    tile: int = DEFAULT_TILE) -> Path:
    """Generate the module for a spec into `out_dir/<name>.py`; return its path."""
    cascade = spec if isinstance(spec, Cascade) else load(spec)
    path = Path(out_dir) / f"{cascade.name}.py"
    write_atomically(path, generate(cascade, module_name=cascade.name, rewrite=rewrite,
                                    tile=tile))
    return path


def import_file(path: Path, module_name: str) -> ModuleType:
    specification = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(specification)
    sys.modules[module_name] = module
    specification.loader.exec_module(module)
    return module


def compile(spec, *, backend: str = "triton", rewrite: bool = True,  # noqa: A001
            tile: int = DEFAULT_TILE) -> ModuleType:
    """Compile a spec (path or text) and return the imported generated module.

    The module is cached by the spec text, options and einsumattn version. `backend` is
    recorded as the default of the module's `compiled` entry point:
    `module.compiled(*inputs)` runs with that backend. `rewrite=False` keeps the spec's
    own pass structure in the Triton kernels; `tile` is the key tile the online rewrite
    splits the streamed rank by.
    """
    if backend not in ("triton", "torch"):
        raise ValueError(f"backend must be 'triton' or 'torch', got {backend!r}")
    source = read_spec(spec)
    cascade = load(spec)
    key = cache_key(source.text, {"name": cascade.name, "rewrite": rewrite, "tile": tile})
    folder = cache_dir() / key
    path = folder / f"{cascade.name}.py"
    if not path.exists():
        write_atomically(path, generate(cascade, module_name=cascade.name, rewrite=rewrite,
                                        tile=tile))
    module = import_file(path, f"einsumattn_generated.{cascade.name}_{key}")
    cls = getattr(module, _class_of(module))
    module.compiled = cls(backend=backend) if backend == "torch" else _lazy(cls, backend)
    return module


def _class_of(module: ModuleType) -> str:
    return module.__all__[0]


def _lazy(cls, backend: str):
    """Build the module on first use, so a fallback warning appears where it is used."""
    instance = []

    def run(*inputs):
        if not instance:
            instance.append(cls(backend=backend))
        return instance[0](*inputs)
    return run
