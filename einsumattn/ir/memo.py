"""Analyses memoized on the cascade they analyse.

A `Cascade` is frozen once built (every stage that changes one returns a new one), so a
fact derived from it holds for as long as the object lives. `per_cascade` keeps each
result in a table on the cascade itself: it lives and dies with the cascade (no global
table to grow or to go stale), and a rewritten or renamed cascade, being a new object,
starts empty. Compiling one spec asks the same questions many times (the fused
schedule alone asks for the absent tensors of every candidate stage); see
docs/compile-speed.md.

Results are shared between callers: a memoized function returns immutable values, or
its callers treat them as read-only.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

Result = TypeVar("Result")


def per_cascade(function: Callable[..., Result]) -> Callable[..., Result]:
    """`function(cascade, *args)` computed once per cascade and hashable `args`."""

    @functools.wraps(function)
    def memoized(cascade, *args):
        table = cascade._memo
        key = (memoized, args)
        try:
            return table[key]
        except KeyError:
            pass
        result = table[key] = function(cascade, *args)
        return result

    memoized.uncached = function     # for tests that compare the two
    return memoized
