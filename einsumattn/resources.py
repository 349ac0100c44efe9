"""Where the package's data folders are: the grammar and its prebuilt parser tables
(`grammars/`) and the code templates (`templates/`).

The project keeps them at its top level, beside `einsumattn/` (the layout a newcomer
reads: the grammar and the templates are not code), and a wheel ships them inside the
package (pyproject.toml maps them to `einsumattn/grammars` and `einsumattn/templates`).
So an installed package finds them inside itself, and a checkout (an editable install,
or the source tree on PYTHONPATH) beside itself."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
FOLDERS = ("grammars", "templates")


def folder(name: str) -> Path:
    """The data folder `name` (one of FOLDERS): inside the package where it was
    installed from a wheel, else the checkout's top-level one."""
    inside = PACKAGE / name
    return inside if inside.is_dir() else PACKAGE.parent / name
