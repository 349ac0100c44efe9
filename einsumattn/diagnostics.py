"""Diagnostics: errors about a spec, located in its source and rendered with a caret.

Every problem a user can cause with a spec file is reported as a `SpecError`, never as a
Python traceback. A rendered diagnostic reads:

    spec.attn:12:22: error: unknown tensor 'QKK'
       12 | SN[b, h, p, m] = exp(QKK[b, h, p, m] - GM[b, h, p])
          |                      ^^^
    hint: did you mean 'QK'?

A `SpecWarning` is rendered the same way with `warning:` in place of `error:`; it is
also a Python warning (a `UserWarning`), which is how library users see it.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from typing import Iterable

# Lines longer than this are shown as a window around the caret, so a 10 MB line
# still renders as one readable screen line.
_MAX_SHOWN_LINE = 100


@dataclass(frozen=True)
class Span:
    """A region of a source text: 1-based line and column, end exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def point(line: int, column: int) -> "Span":
        return Span(line, column, line, column + 1)

    def merge(self, other: "Span") -> "Span":
        start = min((self.line, self.column), (other.line, other.column))
        end = max((self.end_line, self.end_column), (other.end_line, other.end_column))
        return Span(start[0], start[1], end[0], end[1])


@dataclass(frozen=True)
class Source:
    """The text of a spec and the name it is reported under."""

    text: str
    filename: str = "<spec>"

    def line_text(self, line: int) -> str:
        # Only '\n' ends a line (the parser normalises CR and CRLF); splitlines() would
        # also split at form feeds and U+2028, which are ordinary characters here.
        lines = self.text.split("\n")
        if 1 <= line <= len(lines):
            return lines[line - 1]
        return ""


class _Located:
    """What a diagnostic says: the message, where (a span of a source), and what to do."""

    severity = "error"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 source: Source | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.source = source

    def render(self) -> str:
        return _render(self.severity, self.message, self.span, self.hint, self.source)

    def __str__(self) -> str:
        return self.render()


class SpecError(_Located, Exception):
    """A problem in a spec: what is wrong, where, and what would fix it."""

    def with_source(self, source: Source) -> "SpecError":
        if self.source is None:
            self.source = source
        return self


class SpecWarning(_Located, UserWarning):
    """A spec that is valid but probably does not mean what it says (docs/language.md,
    "Warnings"): where, what, and how to say it so that it does not warn. Its text is
    the rendered diagnostic, with `warning:` where an error has `error:`."""

    severity = "warning"

    def as_error(self) -> SpecError:
        """The same diagnostic as an error (`--werror`)."""
        return SpecError(self.message, self.span, self.hint, self.source)


# The texts of the warnings issued so far in this process.
_ISSUED: set[str] = set()


def issue_warnings(found: Iterable[SpecWarning]) -> None:
    """Issue each warning through Python's `warnings`, attributed to the first caller
    outside einsumattn (the user's `einsumattn.load(...)` line), as `warnings.warn` with
    the right stacklevel would.

    Each text (it holds the file, the position and the message) is issued once per
    process, however often the spec is loaded or compiled: loading it again, or
    compiling it after loading it, says nothing new. Python's own once-registries are
    no help here: every change to the filters (importing torch makes some) clears
    them. Where the filters say "always" or "error" for it (`pytest.warns`,
    `-W error::einsumattn.SpecWarning`), it is issued every time."""
    found = list(found)
    if not found:
        return
    frame = sys._getframe(1)
    # By file, not module name: `python -m einsumattn` runs einsumattn's __main__.py
    # as the module `__main__`.
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_FOLDER):
        frame = frame.f_back
    filename, lineno, module = ("sys", 1, "sys") if frame is None else \
        (frame.f_code.co_filename, frame.f_lineno, frame.f_globals.get("__name__", ""))
    for warning in found:
        text = str(warning)
        action = _action(text, module, lineno)
        if action == "ignore" or (text in _ISSUED and action not in ("always", "error")):
            continue
        _ISSUED.add(text)
        warnings.warn_explicit(warning, SpecWarning, filename, lineno, module, registry={})


def _action(text: str, module: str, lineno: int) -> str:
    """What the warnings filters say for a SpecWarning with `text` issued at `module`'s
    line `lineno`: the first filter that matches, as `warnings` itself chooses."""
    for action, message, category, modules, line in warnings.filters:
        if (message is None or message.match(text)) and issubclass(SpecWarning, category) \
                and (modules is None or modules.match(module)) and line in (0, lineno):
            return action
    return warnings.defaultaction


_PACKAGE_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")


def _render(severity: str, message: str, span: Span | None, hint: str | None,
            source: Source | None) -> str:
    """`file:line:col: error: message`, the line with a caret under the span, the hint."""
    filename = source.filename if source else "<spec>"
    if span is None:
        head = f"{filename}: {severity}: {message}"
        return head + (f"\nhint: {hint}" if hint else "")
    line, col = span.line, span.column
    out = [f"{filename}:{line}:{col}: {severity}: {message}"]
    text = source.line_text(line) if source else ""
    if text:
        if span.end_line == line:
            width = max(1, span.end_column - col)
        else:
            width = max(1, len(text) - col + 1)
        shown, caret_col = _window(text, col)
        width = max(1, min(width, len(shown) - caret_col + 1))
        gutter = f"{line:>5} | "
        out.append(gutter + shown)
        out.append(" " * (len(gutter) - 2) + "| " + " " * (caret_col - 1) + "^" * width)
    if hint:
        out.append(f"hint: {hint}")
    return "\n".join(out)


def _window(text: str, col: int) -> tuple[str, int]:
    """The part of a long line shown around column `col`, and the caret's column in it."""
    text = text.replace("\t", " ")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    if len(text) <= _MAX_SHOWN_LINE:
        return text, col
    start = max(0, col - 1 - _MAX_SHOWN_LINE // 2)
    piece = text[start:start + _MAX_SHOWN_LINE]
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + _MAX_SHOWN_LINE < len(text) else ""
    return prefix + piece + suffix, col - start + len(prefix)


def did_you_mean(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """A 'did you mean' hint naming the closest candidate, if one is close."""
    import difflib      # only when a spec has an error: not on the way of a compile

    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=cutoff)
    return f"did you mean '{close[0]}'?" if close else None


class BindError(ValueError):
    """Inputs, sizes or params that do not fit a cascade when it is run: which input,
    which rank, what was expected and what was given."""
