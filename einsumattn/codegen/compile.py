"""Compiling a spec: generate the module, write it atomically, import it.

Generated files are cached under a key that covers every input of `generate`: the
spec's text and file name (the `Source` the cascade is built from, field by field), every
field of `module.Options`, the einsumattn version and a hash of the generator's own
sources. So recompiling an unchanged spec is an import, and nothing that changes the
generated text can reuse a stale file.

A cached file is trusted only after it verifies: it ends with a line holding the
SHA-256 of everything above it, and its SPEC_SHA256 is the hash of the spec being
compiled. A missing, empty, truncated or altered file is generated again, and the
module is executed from the verified text (not re-read from disk, and no stale
bytecode). Files are written to a fresh temporary name in the same folder, flushed to
disk (the file, then the folder after the rename) and renamed into place (`os.replace`
is atomic), so two processes compiling the same spec at once both end with a complete,
verified file; they get mode 0o666 less the umask, like any file a program creates.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import secrets
import sys
from pathlib import Path
from types import ModuleType

from .. import __version__
from ..defaults import cache_dir
from ..diagnostics import Source
from ..ir import Cascade
from ..loader import load, load_source, read_spec
from ..backends.module import Options, Plan, generate, spec_sha256
from ..backends.registry import backend_names, choice_text
from ..resources import FOLDERS, folder
from ..transform import DEFAULT_TILE


@functools.lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """A hash of the code that generates modules (the IR, analyses, code generators and
    templates): a changed generator never reuses a module an older one wrote, even
    within one version number (as during development)."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for root in (package, *map(folder, FOLDERS)):
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".j2", ".lark") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root.parent)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(source: Source, options: Options) -> str:
    """The cache key of a module: every field of the spec's Source and of the Options
    `generate` receives (iterated, so a new field is in the key without more code),
    the version and the generator's fingerprint. repr() keeps the parts apart."""
    parts = [__version__, generator_fingerprint()]
    for record in (source, options):
        parts += [f"{field.name}={getattr(record, field.name)!r}"
                  for field in dataclasses.fields(record)]
    material = "\0".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.sha256(material).hexdigest()[:20]


# ---------------------------------------------------------------- writing files

def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one,
    and the new one survives a crash once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # os.open applies the umask to 0o666, as for any file a program creates.
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the platform allows it."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


# ---------------------------------------------------------------- verified cache entries

_CHECKSUM = "# einsumattn cache entry: sha256 of the lines above: "
_SPEC_HASH = re.compile(r'^SPEC_SHA256 = "([0-9a-f]{64})"$', re.M)


def sealed(text: str) -> str:
    """A cache entry: the module's text and a last line with its checksum."""
    text = text if text.endswith("\n") else text + "\n"
    return f"{text}{_CHECKSUM}{hashlib.sha256(text.encode('utf-8')).hexdigest()}\n"


def verified(path: Path, spec_text: str) -> str | None:
    """The text of the cache entry at `path` if it is whole (its checksum line matches
    what precedes it) and was generated from `spec_text`; None otherwise."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head, newline, last = data[:-1].rpartition(b"\n")
    body = head + newline
    if not data.endswith(b"\n") or \
            last != (_CHECKSUM + hashlib.sha256(body).hexdigest()).encode():
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stored = _SPEC_HASH.search(text)
    if stored is None or stored.group(1) != spec_sha256(spec_text):
        return None
    return text


# ---------------------------------------------------------------- compiling

def compile_to_file(spec, out_dir: str | os.PathLike, *, rewrite: bool = True,
                    tile: int = DEFAULT_TILE, train: bool = False, merge: bool = False,
                    plan: Plan | None = None) -> Path:
    """Generate the module for a spec into `out_dir/<name>.py`; return its path. `plan`:
    the cascade's Plan with these options, when the caller has built it already."""
    cascade = spec if isinstance(spec, Cascade) else load(spec)
    text = generate(cascade, plan=plan, module_name=cascade.name, rewrite=rewrite,
                    tile=tile, train=train, merge=merge)
    path = Path(out_dir) / f"{cascade.name}.py"
    write_atomically(path, text)
    return path


def import_file(path: Path, module_name: str, text: str | None = None) -> ModuleType:
    """Import the file at `path` as `module_name`; with `text`, execute that text (what
    was verified) as the file's code instead of reading it again."""
    specification = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(specification)
    sys.modules[module_name] = module
    try:
        if text is None:
            specification.loader.exec_module(module)
        else:
            exec(builtins.compile(text, str(path), "exec"), module.__dict__)  # noqa: S102
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def compile(spec, *, backend: str = "triton", rewrite: bool = True,  # noqa: A001
            tile: int = DEFAULT_TILE, train: bool = False,
            merge: bool = False) -> ModuleType:
    """Compile a spec (path or text) and return the imported generated module.

    The module is cached (see the module docstring). `backend` is recorded as the
    default of the module's `compiled` entry point: `module.compiled(*inputs)` runs with
    that backend (any name of backends/registry.py). `rewrite=False` keeps the spec's own pass structure in the Triton
    kernels; `tile` is the key tile the online rewrite splits the streamed rank by.
    `train=True` adds the backward's kernels (docs/gradients.md, "The fast backward"):
    `backend="triton"` then trains with them instead of differentiating the torch code.
    `merge=True` adds `partial`, `merge` and `finish`, the merge of partial states over
    ranges of the streamed rank (docs/merge.md), where the spec has one (else `MERGE` is
    None and the module's comment says why).
    """
    if backend not in backend_names():
        raise ValueError(f"backend must be {choice_text()}, got {backend!r}")
    source = read_spec(spec)
    cascade = load_source(source)
    options = Options(rewrite=rewrite, tile=tile, train=train, merge=merge,
                      module_name=cascade.name)
    key = cache_key(source, options)
    path = cache_dir() / key / f"{cascade.name}.py"
    text = verified(path, source.text)
    if text is None:
        text = sealed(generate(cascade, **dataclasses.asdict(options)))
        write_atomically(path, text)
    module = import_file(path, f"einsumattn_generated.{cascade.name}_{key}", text)
    cls = getattr(module, _class_of(module))
    module.compiled = cls(backend=backend) if backend != "triton" else _lazy(cls, backend)
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
