"""Reading a spec from a file or a string, and running the frontend and IR builder."""

from __future__ import annotations

import os
from pathlib import Path

from .diagnostics import Source, SpecError, Span, issue_warnings
from .frontend import parse
from .frontend.parser import MAX_SPEC_BYTES, too_large
from .ir import Cascade, build
from .ir.lint import lint


def _looks_like_path(spec: str) -> bool:
    return "\n" not in spec and (spec.endswith(".attn") or os.path.isfile(spec))


def read_spec(spec: str | os.PathLike) -> Source:
    """The source text of a spec: a `Path`, a string naming a file (one line ending in
    `.attn`, or an existing file), or else the spec text itself."""
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and _looks_like_path(spec)):
        path = Path(spec)
        try:
            with open(path, "rb") as handle:
                # One byte more than the limit tells a file at the limit from a larger one.
                data = handle.read(MAX_SPEC_BYTES + 1)
        except IsADirectoryError:
            raise SpecError(f"'{path}' is a directory, not a spec file",
                            hint="give the path of a .attn file",
                            source=Source("", str(path))) from None
        except OSError as error:
            raise SpecError(f"cannot read '{path}': {error.strerror or error}",
                            hint="check the path", source=Source("", str(path))) from None
        if len(data) > MAX_SPEC_BYTES:
            raise too_large(data[:MAX_SPEC_BYTES].decode("utf-8", "ignore"), str(path))
        return Source(_decode(data, str(path)), str(path))
    return Source(spec, "<spec>")


def _decode(data: bytes, filename: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        line_start = data.rfind(b"\n", 0, error.start) + 1
        # Columns count characters, not bytes: decode what precedes the bad byte.
        column = len(data[line_start:error.start].decode("utf-8", "replace")) + 1
        raise SpecError(f"the file is not UTF-8 text (byte 0x{data[error.start]:02x})",
                        Span.point(line, column), "a spec is a UTF-8 text file",
                        Source(data[:error.start].decode("utf-8", "replace"), filename)
                        ) from None


def load(spec: str | os.PathLike) -> Cascade:
    """Parse and check a spec (a path or the spec text) into a Cascade.

    Raises `SpecError` for any problem in the spec."""
    return load_source(read_spec(spec))


def load_source(source: Source) -> Cascade:
    """The Cascade of a spec already read: a function of `source` (its text and file
    name) alone, which is what lets compile() key its cache by the source.

    Warnings about the spec (ir/lint.py) are issued as `SpecWarning`s through Python's
    `warnings`, attributed to the caller's line; each text once per process unless a
    filter says otherwise (diagnostics.py)."""
    tree = parse(source.text, source.filename)
    default_name = Path(source.filename).stem if source.filename != "<spec>" else "attention"
    cascade = build(tree, default_name)
    issue_warnings(lint(cascade))
    return cascade
