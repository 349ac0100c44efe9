"""What each IR operation computes, elementwise, as numpy functions.

One table serves every evaluator that runs on the host (the oracle, parameter defaults),
so the meaning of `elu` or `//` is written down exactly once. Generated code (torch,
Triton) must match these definitions; the equivalence tests hold it to that.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _sigmoid(x):
    # Written to avoid overflow in exp for large |x|.
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def _elu(x):
    # ELU with alpha = 1 (Clevert et al. 2016), as torch.nn.functional.elu.
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


UNARY: dict[str, Callable] = {
    "neg": np.negative,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, 0.0),
    "elu": _elu,
    "abs": np.abs,
    "sign": np.sign,
    "not": np.logical_not,
}

BINARY: dict[str, Callable] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.true_divide,
    "//": np.floor_divide,   # floor division, as Python's
    "%": np.mod,             # result has the divisor's sign, as Python's
    "**": np.power,
    "max": np.maximum,
    "min": np.minimum,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
    "and": np.logical_and,
    "or": np.logical_or,
}


def apply(op: str, args: list):
    """Apply operation `op` to numpy values (arrays or scalars) elementwise."""
    with np.errstate(all="ignore"):
        if op == "where":
            return np.where(args[0], args[1], args[2])
        if op in UNARY:
            return UNARY[op](args[0])
        return BINARY[op](args[0], args[1])
