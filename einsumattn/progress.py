"""Progress bars for the long commands (`check`, `bench`): tqdm's bar on stderr when it
is a terminal, with what is being tried; nothing when it is not (a log, CI), where the
commands' own lines say what happened."""

from __future__ import annotations

import sys


class Quiet:
    """The bar where none is drawn: lines are printed as they come."""

    def update(self, count: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Bar(Quiet):
    """tqdm's bar; lines printed above it, so the two never interleave."""

    def __init__(self, total: int, description: str, stream) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm(total=total, desc=description, file=stream, leave=False,
                          dynamic_ncols=True, unit="case")

    def update(self, count: int = 1) -> None:
        self._tqdm.update(count)

    def set_description(self, text: str) -> None:
        self._tqdm.set_description_str(text[:60])

    def write(self, line: str) -> None:
        self._tqdm.write(line)

    def close(self) -> None:
        self._tqdm.close()


def bar(total: int, description: str, stream=None) -> Quiet:
    """A progress bar of `total` steps on `stream` (stderr): drawn on a terminal when
    tqdm is installed, else quiet."""
    stream = stream or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return Quiet()
    try:
        import tqdm  # noqa: F401
    except ImportError:         # pragma: no cover - tqdm is a dependency
        return Quiet()
    return _Bar(total, description, stream)


__all__ = ["bar", "Quiet"]
