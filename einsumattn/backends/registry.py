"""The backends a generated module offers, in one place: each with its name (what users
pass as `backend=`), what it runs, and whether it applies to a plan (None) or why not.
The template, compile(), the CLI and the docs read this list; a new backend is one more
entry here and its code in the template (docs/architecture.md, "Adding a backend")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Backend:
    name: str
    runs: str                                  # one line for users
    applies: Callable[[object], str | None]    # plan -> None, or the reason it does not


def _triton(plan) -> str | None:
    return plan.triton.fallback


def _always(plan) -> None:
    return None


BACKENDS: tuple[Backend, ...] = (
    Backend("triton", "GPU kernels: the fused schedule where the cascade has one", _triton),
    Backend("triton-unfused", "GPU kernels, one per Einsum, intermediates in global memory",
            _triton),
    Backend("torch", "the reference: one block of torch code per Einsum (any device)",
            _always),
)


def backend_names() -> tuple[str, ...]:
    return tuple(backend.name for backend in BACKENDS)


def choice_text(names: tuple[str, ...] | None = None) -> str:
    """'triton', 'triton-unfused' or 'torch': the names as an error message lists them."""
    quoted = [repr(name) for name in (names or backend_names())]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
