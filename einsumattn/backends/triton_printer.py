"""Triton source for the pieces every Triton schedule shares: IR expressions as Triton
blocks (`TritonPrinter`), conditions with one value per program, the compile-time checks
of tile knobs, and the helpers every generated Triton module defines.
"""

from __future__ import annotations

import copy
import math

from ..ir import expr as ir
from ..ir.expr import Printer
from ..schedule.kernel_ir import Unsupported
from .printers import integer_comparison


def scalar_condition(text: str) -> str:
    """A condition with one value per program, as a one-element boolean block. Triton's
    interpreter (3.9) gives `block & scalar` an integer array, not a boolean one, and then
    rejects it as a mask ("mask has unsupported dtype"), whether the scalar is a loaded
    value compared (`S > 0.0`) or the program's own index (`b_ + 1 < B_`); a comparison
    with a block is a boolean block, which broadcasts against the lanes. The GPU compiler
    takes either form and folds the one-element block into a splat."""
    return f"({text}) != tl.zeros([1], tl.int1)"




class TritonPrinter(Printer):
    """Expressions over Triton blocks. `names` maps index variables, dims and params to
    the kernel's names; `read` prints a load."""

    # NaN in gives NaN out, as in the oracle: tl.maximum and tl.minimum drop a NaN
    # operand unless told to propagate it, and sign passes a NaN through its last branch.
    _NAN = "propagate_nan=tl.PropagateNan.ALL"
    _UNARY = {"exp": "tl.exp({0})", "log": "tl.log({0})", "sqrt": "tl.sqrt({0})",
              "sigmoid": "_sigmoid({0})",     # HELPERS: one exponential, one division
              "abs": "tl.abs({0})",
              # tanh through sigmoid (no tl.tanh everywhere): HELPERS' _tanh, odd as the
              # oracle's (tanh(-1) + tanh(1) is exactly 0).
              "tanh": "_tanh({0})",
              "relu": f"tl.maximum({{0}}, 0.0, {_NAN})",
              "elu": f"tl.where(({{0}}) > 0, {{0}}, tl.exp(tl.minimum({{0}}, 0.0, {_NAN})) - 1.0)",
              "sign": "tl.where(({0}) > 0, 1.0, tl.where(({0}) < 0, -1.0, "
                      "tl.where(({0}) == 0, 0.0, {0})))",
              # version 1.1: HELPERS below (Triton has no log1p, expm1 or softplus)
              "softplus": "_softplus({0})", "logsigmoid": "_logsigmoid({0})",
              "log1p": "_log1p({0})", "expm1": "_expm1({0})",
              "silu": "({0}) * _sigmoid({0})", "erf": "tl.erf({0})"}

    def __init__(self, names: dict[str, str], read, integer: bool = False):
        super().__init__(names)
        self._read = read
        self.integer = integer   # index arithmetic: floor semantics for // and %

    def const(self, value) -> str:
        if value == math.inf:
            return "float('inf')"
        if value == -math.inf:
            return "float('-inf')"
        return repr(float(value)) if not self.integer else repr(value)

    def read(self, node: ir.Read) -> str:
        return self._read(node)

    def boolean(self, op: str, expr: ir.Op) -> str:
        return {"and": "&", "or": "|", "not": "~"}[op]

    def print(self, expr: ir.Expr, context: int) -> str:
        if isinstance(expr, ir.Op) and expr.op == "not":
            # `== 0` rather than `~`: also right when the operand is a Python bool (the
            # interpreter folds scalar comparisons), where ~True would be -2.
            return f"(({self.print(expr.args[0], 0)}) == 0)"
        if isinstance(expr, ir.Op) and expr.op in ("and", "or"):
            # tl.where rather than & and |: Triton's interpreter cannot & a scalar
            # condition (a scalar read compared) with a block of them; `!= 0` makes the
            # result booleans again (the interpreter gives where(c, True, x < 0) float
            # data, which a later & rejects: found by the randomized profile).
            a, b = (self.print(arg, 0) for arg in expr.args)
            return f"(tl.where({a}, {b}, False) != 0)" if expr.op == "and" else \
                f"(tl.where({a}, True, {b}) != 0)"
        if isinstance(expr, ir.Op) and expr.op in ("//", "%"):
            left, right = (self.print(a, 0) for a in expr.args)
            helper = "_floordiv" if expr.op == "//" else "_mod"
            if not self.integer:
                helper += "_f"
            return f"{helper}({left}, {right})"
        if isinstance(expr, ir.Op) and expr.op == "**":
            return self._power(*expr.args)
        if not self.integer and self.integer_comparison(expr):
            return self.in_integers().print(expr, context)
        return super().print(expr, context)

    @staticmethod
    def integer_comparison(expr: ir.Expr) -> bool:
        return integer_comparison(expr)

    def in_integers(self) -> "TritonPrinter":
        """This printer for index arithmetic (integers, floor // and %)."""
        twin = copy.copy(self)
        twin.integer = True
        return twin

    def index(self, node: ir.Index) -> str:
        return self._value(super().index(node))

    def dim(self, node: ir.Dim) -> str:
        return self._value(super().dim(node))

    def _value(self, integer: str) -> str:
        """An index or a size used as a value is a float, as in the oracle: Triton's
        math takes floats only (sqrt(P), exp(m - p)), and -(p - m) must be -0.0 where
        p = m (1 / -(p - m) is -inf). `+ 0.0` converts a block, a scalar argument or the
        literal of a fixed size to float32."""
        return integer if self.integer else f"({integer} + 0.0)"

    def _power(self, base: ir.Expr, exponent: ir.Expr) -> str:
        if isinstance(exponent, ir.Const) and float(exponent.value).is_integer() \
                and abs(exponent.value) <= 8:
            n = int(exponent.value)
            if n == 0:
                return "1.0"
            text = " * ".join([f"({self.print(base, 0)})"] * abs(n))
            return f"({text})" if n > 0 else f"(1.0 / ({text}))"
        if isinstance(base, ir.Const) and base.value == 1:
            return "1.0"       # 1 ** x is 1 for every x, NaN included (numpy's power)
        if isinstance(base, ir.Const) and base.value == math.inf:
            x = self.print(exponent, 0)
            return f"tl.where(({x}) == 0, 1.0, tl.exp(({x}) * float('inf')))"
        if isinstance(base, ir.Const) and base.value > 0:
            return f"tl.exp(({self.print(exponent, 0)}) * {math.log(base.value)!r})"
        return f"_pow_f({self.print(base, 0)}, {self.print(exponent, 0)})"

    def function(self, op: str, args: list[str]) -> str:
        if op in self._UNARY:
            return self._UNARY[op].format(args[0])
        if op in ("max", "min"):
            return f"tl.{'maximum' if op == 'max' else 'minimum'}({args[0]}, {args[1]}, " \
                   f"{self._NAN})"
        if op == "where":
            return f"tl.where({args[0]}, {args[1]}, {args[2]})"
        raise Unsupported(op)


def clamped_offset(tensor: str, coordinates) -> str:
    """`tensor`'s element offset from its coordinates, each (text, the extent it is
    clamped into or None): the one address form of every Triton kernel's loads (kernel
    IR Loads, backends/triton_ir.py). Clamped, every address a live lane touches is
    inside the tensor; whether the value is present is the mask's business."""
    terms = []
    for position, (text, bound) in enumerate(coordinates):
        if bound is not None:
            text = f"tl.minimum(tl.maximum({text}, 0), {bound} - 1)"
        terms.append(f"({text}) * {tensor}_s{position}")
    return " + ".join(terms) or "0"


def load(address: str, mask: str | None = None, ok: bool = False, raw: bool = False) -> str:
    """A load as float32 (or, `ok`, a presence flag as a boolean; `raw`, in the tensor's
    own dtype: a dot operand, which the dot converts once); masked lanes read 0. No mask
    where the address is one per program and valid."""
    widen = "" if raw else ".to(tl.float32)"
    if mask is None:
        return f"(tl.load({address}) != 0)" if ok else f"tl.load({address}){widen}"
    if ok:
        return f"(tl.load({address}, mask={mask}, other=0) != 0)"
    return f"tl.load({address}, mask={mask}, other=0.0){widen}"


def tile_asserts(knobs, least: int) -> list[str]:
    """Kernel lines that refuse, when the kernel compiles, a block size from a tuning
    table that the kernel cannot take: tl.arange needs a power of two, tl.dot at least
    16 in each dimension."""
    return [f'    tl.static_assert({k} >= {least} and ({k} & ({k} - 1)) == 0, '
            f'"{k}: a block size of the tuning table, a power of two >= {least}")'
            for k in knobs]


# Helpers every generated Triton module defines: floor division and modulo with Python's
# semantics (Triton's // and % truncate toward zero, like C).
HELPERS = '''
# sigmoid as the oracle writes it: exp of -|x| only, so no overflow to 1 / (1 + inf) = 0
# where the value is a small positive number; one exponential and one division per value
# (sigmoid attention's point is a cheaper tile than softmax's). e = 2**(-|x| log2(e)) is
# in [0, 1]; the GPU's exp2 flushes a result below 2**-126 to 0, which 1 + e absorbs, and
# which e * r turns from a value below the smallest normal float into 0.
@triton.jit
def _sigmoid(x):
    e = tl.exp2(-tl.abs(x) * 1.4426950408889634)
    r = 1.0 / (1.0 + e)
    return tl.where(x >= 0, r, e * r)


# tanh(x) = 1 - 2 / (1 + e^(2|x|)) with x's sign: odd by construction, as the oracle's, so
# that tanh(-a) + tanh(a) is exactly 0; at a zero, the zero itself (tanh(-0.0) is -0.0),
# and NaN stays NaN. One exp2 and one reciprocal per value (_sigmoid_exp2: rcp.approx on
# NVIDIA GPUs, 1 ulp, where Triton's tl.sigmoid took an exp, a multiply and an IEEE
# division): soft-capping's loop on sm_90a 7800 -> 5752 issue slots per 128 x 64 tile.
# Near 0 both forms lose the same bits to 1 - (about 1): an absolute error of ulp(1).
@triton.jit
def _tanh(x):
    t = 1.0 - 2.0 * _sigmoid_exp2(2.8853900817779268 * tl.abs(x))
    return tl.where(x < 0, -t, tl.where(x == 0, x, t))


# log1p and expm1 exact to a few ulp where 1 + x or exp(x) rounds (Kahan's corrections:
# log(u) * x / (u - 1) with u = 1 + x; (u - 1) * x / log(u) with u = exp(x)); inf stays inf.
@triton.jit
def _log1p(x):
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.where(u == float("inf"), u, tl.log(u) * (x / (u - 1.0))))


@triton.jit
def _expm1(x):
    u = tl.exp(x)
    d = u - 1.0
    return tl.where(u == 1.0, x, tl.where((d == -1.0) | (u == float("inf")), d,
                                          d * (x / tl.log(u))))


# softplus(x) = max(x, 0) + log1p(exp(-|x|)): no overflow; logsigmoid(x) = -softplus(-x).
@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL) + _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def _logsigmoid(x):
    # -softplus(-x), as the oracle: logsigmoid(+inf) is -0.0 (the limit from below), which
    # a division by it keeps (min(x, 0) - log1p(exp(-|x|)) gave +0.0 there).
    return -_softplus(-x)


@triton.jit
def _floordiv(a, b):
    q = a // b
    return tl.where((a % b != 0) & ((a < 0) != (b < 0)), q - 1, q)


@triton.jit
def _mod(a, b):
    r = a % b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)


# Triton's interpreter (TRITON_INTERPRET=1) truncates float32 -> bfloat16 and multiplies
# bfloat16 bit patterns in tl.dot (triton-lang/triton#11584); _to_dot works around both.
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _to_dot(x, DOT_DTYPE: tl.constexpr):
    """A tl.dot operand in the dot's precision (float32 values, or a tile loaded in its
    own dtype, in; rounded to nearest)."""
    if _INTERPRETED and DOT_DTYPE == tl.bfloat16:
        # Round to nearest even by hand; the rounded value enters the dot as float32,
        # which holds it exactly, so the dot sees what the GPU's would. (A tile loaded in
        # its own dtype is widened first: exact.)
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return x.to(DOT_DTYPE)


@triton.jit
def _stored(x, pointer):
    """x in the dtype `pointer` points to, rounded to nearest even (an output the host
    allocated in the inputs' dtype; the interpreter would truncate to bfloat16)."""
    return _to_dot(x, pointer.dtype.element_ty)


# A score term a * m0 linear in the key tile's column, added by the matrix unit
# (schedule/biases.py): [ROWS, 16] rows of c = a / s as hi + mid + lo, each rounded to
# bfloat16 from what the parts before it leave (exact differences: c's 24 bits in three
# parts of 8), times [16, BLOCK] columns whose first three rows are m0 = 0 .. BLOCK - 1
# (exact in bfloat16 up to 256): hi*m0 + mid*m0 + lo*m0, each product exact in float32.
@triton.jit
def _coefficient_rows(c, ROWS: tl.constexpr):
    hi = _to_dot(c, tl.bfloat16).to(tl.float32)
    rest = c - hi
    mid = _to_dot(rest, tl.bfloat16).to(tl.float32)
    lo = _to_dot(rest - mid, tl.bfloat16).to(tl.float32)
    part = tl.arange(0, 16)[None, :] + tl.zeros([ROWS, 16], tl.int32)
    return _to_dot(tl.where(part == 0, hi, tl.where(part == 1, mid, tl.where(part == 2, lo, 0.0))),
                   tl.bfloat16)


@triton.jit
def _key_columns(BLOCK: tl.constexpr):
    part = tl.arange(0, 16)[:, None] + tl.zeros([16, BLOCK], tl.int32)
    column = tl.arange(0, BLOCK)[None, :] + tl.zeros([16, BLOCK], tl.int32)
    return _to_dot(tl.where(part < 3, column.to(tl.float32), 0.0), tl.bfloat16)


# sigmoid(x) from y = -x * log2(e), which the fused kernels' lowering folds into the FMAs
# of the argument (schedule/lower_attention.py): 1 / (1 + 2**y), one ex2 and one
# reciprocal per score. 2**y is inf only where x < -88.7, where sigmoid(x) < 2**-126 and 0
# is the float32 result a flush to zero gives anyway. On NVIDIA GPUs the reciprocal is
# rcp.approx.ftz (1 ulp, against the 0.5 ulp of an IEEE division's ~10 instructions): the
# value is then rounded to the dot's precision (2**-9 for bfloat16) or summed in float32,
# where 1 ulp is within the check's float32 roundoff budget. The interpreter (and other
# GPUs) divide.
_FAST_RCP = tl.constexpr(not _INTERPRETED and torch.version.hip is None)


@triton.jit
def _sigmoid_exp2(y):
    d = 1.0 + tl.exp2(y)
    if _FAST_RCP:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [d],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return 1.0 / d


# Float // and % as Python's and numpy's (the oracle's), infinities included: from C's
# fmod (Triton's float %), as numpy computes them. floor(a / b) would give inf for
# inf // 2 (NaN) and 0 for -5 // inf (-1); a - b * floor(a / b) NaN for 5 % inf (5).
# The casts make constant operands float32 tensors in the interpreter too, where they
# would otherwise be Python floats (Python's %, and an error for a zero divisor).
@triton.jit
def _mod_f(a, b):
    a = tl.cast(a, tl.float32)
    b = tl.cast(b, tl.float32)
    r = a % b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)


@triton.jit
def _floordiv_f(a, b):
    a = tl.cast(a, tl.float32)
    b = tl.cast(b, tl.float32)
    r = a % b
    q = (a - r) / b
    q = tl.where((r != 0) & ((r < 0) != (b < 0)), q - 1.0, q)
    whole = tl.floor(q)
    whole = tl.where(q - whole > 0.5, whole + 1.0, whole)
    # A zero quotient takes the sign of a / b; a zero divisor gives a / b (inf or NaN).
    return tl.where(b == 0, a / b, tl.where(q == 0, 0.0 * (a / b), whole))


# x ** y as numpy's power for any two values (a base that is not a positive constant and
# an exponent that is not a small integer: RetNet's gamma ** (p - m)): 2 ** (y log2 |x|),
# negated for a negative base (-0.0 included) and an odd integer exponent, NaN for a
# negative base and a fraction; 1 where y == 0 or x == 1 (NaN included, as numpy), and
# for x == -1 at y = +-inf. Its relative error is exp2's of y log2 |x|: a few ulp, times
# |y log2 |x|| for the product.
@triton.jit
def _pow_f(x, y):
    # Nested tl.where, no & or |: the interpreter cannot combine a scalar's booleans.
    x = tl.cast(x, tl.float32)
    y = tl.cast(y, tl.float32)
    # |x| == 1: 1 for every y (y log2 |x| is inf * 0 = NaN at y = +-inf; C99's pow, and
    # numpy's, give 1; a NaN y with x = -1 is NaN below, not a whole number).
    magnitude = tl.where(tl.abs(x) == 1, 1.0, tl.exp2(y * tl.log2(tl.abs(x))))
    whole = tl.floor(y) == y
    signed = tl.where(tl.floor(y * 0.5) != y * 0.5, -magnitude, magnitude)  # y odd: -
    of_sign = tl.where(whole, signed, magnitude)                      # -0.0 ** y
    value = tl.where(x < 0, tl.where(whole, signed, float("nan")),
                     tl.where(x == 0, tl.where(1.0 / x < 0, of_sign, magnitude), magnitude))
    return tl.where(y == 0, 1.0, tl.where(x == 1, 1.0, value))
'''
