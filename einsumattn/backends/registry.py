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
    Backend("reference", "the spec as straight-line torch, one block per Einsum (any "
            "device): what check compares with", _always),
    Backend("torch", "the fused schedule as torch code, a loop over key tiles (any device; "
            "the reference where there is no schedule, TORCH_FALLBACK says why)", _always),
    Backend("triton", "GPU kernels: the fused schedule where the cascade has one", _triton),
    Backend("triton-unfused", "GPU kernels, one per Einsum, intermediates in global memory",
            _triton),
)


def backend_names() -> tuple[str, ...]:
    return tuple(backend.name for backend in BACKENDS)


def choice_text(names: tuple[str, ...] | None = None) -> str:
    """'reference', 'torch', 'triton' or 'triton-unfused': the names as an error message
    lists them."""
    quoted = [repr(name) for name in (names or backend_names())]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
