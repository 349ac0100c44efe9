"""What a rewrite did, and what it could not do: the record shown to users."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One applied rewrite. `tensors` are the Einsums it wrote (their printed form gets
    a comment naming the rule); `identity` is the proof obligation sympy discharged."""

    rule: str
    summary: str
    tensors: tuple[str, ...]
    identity: str

    def comment(self) -> str:
        return f"{self.rule}: {self.summary}"


@dataclass(frozen=True)
class Blocked:
    """A rewrite that does not apply at `tensor`, and the expression that stops it."""

    rule: str
    tensor: str
    reason: str

    def explain(self) -> str:
        return f"{self.rule} does not apply to {self.tensor}: {self.reason}"
