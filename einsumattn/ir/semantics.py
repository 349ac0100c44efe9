"""What each IR operation computes, elementwise, as numpy functions.

One table serves every evaluator that runs on the host (the oracle, parameter defaults),
so the meaning of `elu` or `//` is written down exactly once. Generated code (torch,
Triton) must match these definitions; the equivalence tests hold it to that.
"""

from __future__ import annotations

from typing import Callable


# The tables are built, and numpy imported, on first use (PEP 562): building a cascade
# and compiling it need no numpy unless a constant is folded (docs/compile-speed.md).
def __getattr__(name: str):
    if name in ("UNARY", "BINARY"):
        _build_tables()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sigmoid(x):
    import numpy as np

    # Written to avoid overflow in exp for large |x|.
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def _elu(x):
    import numpy as np

    # ELU with alpha = 1 (Clevert et al. 2016), as torch.nn.functional.elu.
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _softplus(x):
    import numpy as np

    # log(1 + exp(x)) without overflow: log(exp(0) + exp(x)).
    return np.logaddexp(0.0, x)


def _erf(x):
    import math

    import numpy as np

    # numpy has no erf; math.erf is correctly rounded to about 1 ulp in float64.
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _build_tables() -> None:
    import numpy as np

    global UNARY, BINARY
    UNARY = {
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
        "softplus": _softplus,
        "logsigmoid": lambda x: -_softplus(-x),
        "log1p": np.log1p,
        "expm1": np.expm1,
        "silu": lambda x: x * _sigmoid(x),
        "erf": _erf,
        "not": np.logical_not,
    }
    BINARY = {
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


UNARY: dict[str, Callable]
BINARY: dict[str, Callable]


def apply(op: str, args: list):
    """Apply operation `op` to numpy values (arrays or scalars) elementwise."""
    import numpy as np

    if "BINARY" not in globals():
        _build_tables()
    with np.errstate(all="ignore"):
        if op == "where":
            return np.where(args[0], args[1], args[2])
        if op in UNARY:
            return UNARY[op](args[0])
        return BINARY[op](args[0], args[1])
