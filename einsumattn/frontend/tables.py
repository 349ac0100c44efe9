"""The parser's LALR tables, built once and then read from a file.

Building lark's LALR(1) tables from `grammars/attn.lark` costs about 0.2 s (parsing the
grammar, then the LALR analysis), more than parsing and checking a spec; reading the
built parser back (`Lark.save` / `Lark.load`) costs about 15 ms. A table file starts
with a line holding its key, the SHA-256 of everything the tables are built from: the
grammar's text, the parser options, the post-lexer's always-accepted tokens and the
lark version. A file whose key differs (the grammar was edited, lark was upgraded) or
that cannot be read is ignored and the tables are built from the grammar, so a table
file can make parsing faster but never different.

The package ships `grammars/attn.lalr` (regenerate it with `python -m
einsumattn.frontend` after editing the grammar; tests/test_parser_tables.py fails
while it is stale). It is only ever read: an install may be read-only. Tables
built at run time go to the user's cache folder (`defaults.cache_dir()`), when it
can be written.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Iterable

from lark import Lark
from lark import __version__ as lark_version

from ..resources import folder

SHIPPED_TABLE = folder("grammars") / "attn.lalr"


def table_key(grammar: str, options: dict, postlex) -> str:
    """The SHA-256 of everything the tables are built from."""
    parts = [grammar, repr(sorted(options.items())), repr(postlex.always_accept),
             f"lark {lark_version}"]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def read_table(path: Path, key: str) -> Lark | None:
    """The parser saved at `path` if its key is `key`, else None."""
    try:
        with open(path, "rb") as file:
            if file.readline().rstrip(b"\n") != key.encode("ascii"):
                return None
            return Lark.load(file)
    except Exception:  # noqa: BLE001 - a missing, truncated or foreign file: build instead
        return None


def write_table(parser: Lark, path: Path, key: str) -> bool:
    """Save `parser` under `key` at `path` (atomically: a temporary file renamed into
    place, so a concurrent reader sees the old file or the new one). False when the
    folder cannot be written."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            file.write(key.encode("ascii") + b"\n")
            parser.save(file)
        os.replace(temporary, path)
        return True
    except OSError:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        return False


def load_parser(grammar: str, options: dict, postlex, read_from: Iterable[Path],
                write_to: Path | None) -> Lark:
    """The LALR parser for `grammar`: from the first of `read_from` whose key matches,
    else built (and saved at `write_to`, if given and writable)."""
    key = table_key(grammar, options, postlex)
    for path in read_from:
        parser = read_table(path, key)
        if parser is not None:
            return parser
    parser = Lark(grammar, postlex=postlex, **options)
    if write_to is not None:
        write_table(parser, write_to, key)
    return parser

