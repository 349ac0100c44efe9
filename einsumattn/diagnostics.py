"""Diagnostics: errors about a spec, located in its source and rendered with a caret.

Every problem a user can cause with a spec file is reported as a `SpecError`, never as a
Python traceback. A rendered diagnostic reads:

    spec.attn:12:22: error: unknown tensor 'QKK'
       12 | SN[b, h, p, m] = exp(QKK[b, h, p, m] - GM[b, h, p])
          |                      ^^^
    hint: did you mean 'QK'?
"""

from __future__ import annotations

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


class SpecError(Exception):
    """A problem in a spec: what is wrong, where, and what would fix it."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 source: Source | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.source = source

    def with_source(self, source: Source) -> "SpecError":
        if self.source is None:
            self.source = source
        return self

    def render(self) -> str:
        filename = self.source.filename if self.source else "<spec>"
        if self.span is None:
            head = f"{filename}: error: {self.message}"
            return head + (f"\nhint: {self.hint}" if self.hint else "")
        line, col = self.span.line, self.span.column
        out = [f"{filename}:{line}:{col}: error: {self.message}"]
        text = self.source.line_text(line) if self.source else ""
        if text:
            if self.span.end_line == line:
                width = max(1, self.span.end_column - col)
            else:
                width = max(1, len(text) - col + 1)
            shown, caret_col = _window(text, col)
            width = max(1, min(width, len(shown) - caret_col + 1))
            gutter = f"{line:>5} | "
            out.append(gutter + shown)
            out.append(" " * (len(gutter) - 2) + "| " + " " * (caret_col - 1) + "^" * width)
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


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
