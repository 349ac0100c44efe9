"""Proved tile bounds: an affine filter between the streamed rank and the row rank
(`m <= p`, `p - m < W`) read as the bound on the keys a row sees, so a loop over key
tiles can start and stop where the filter allows."""

from __future__ import annotations

import sympy

from ..ir import expr as ir
from ..transform.algebra import Algebra


def stream_bound(condition: ir.Expr, stream: str, row: str):
    """('upper', c) for m <= row + c, ('lower', c) for m >= row + c; None otherwise.
    c is printed for the kernel (integers and params)."""
    if not isinstance(condition, ir.Op) or condition.op not in ("<", "<=", ">", ">="):
        return None
    algebra = Algebra()
    difference = sympy.expand(algebra.to_sympy(condition.args[0]) -
                              algebra.to_sympy(condition.args[1]))
    # Affine in indices, sizes and params only: no tensor reads, no functions.
    names, constants = {}, set()
    for symbol in difference.free_symbols:
        node = algebra.nodes[symbol]
        if isinstance(node, ir.Read):
            return None
        if isinstance(node, ir.Index):
            names[symbol] = sympy.Symbol(node.var)
        else:            # a param or a size: known on the host
            names[symbol] = sympy.Symbol(node.name if isinstance(node, ir.Param) else
                                         node.rank)
            constants.add(names[symbol])
    if difference.atoms(sympy.Function):
        return None
    # Plain names from here on: the offset is printed into the kernel and the host.
    difference = difference.xreplace(names)
    m, p = sympy.Symbol(stream), sympy.Symbol(row)
    a = difference.coeff(m)
    rest = sympy.expand(difference - a * m)
    if a not in (1, -1) or rest.coeff(p) != -a:
        return None
    constant = sympy.expand(rest + a * p)       # difference = a*(m - p) + constant
    if constant.free_symbols - constants:
        return None
    # a*(m - p) + constant OP 0  ->  m - p OP' -constant/a
    op = condition.op
    if a == -1:
        op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
    offset = -constant / a
    # m < row + c is m <= row + c - 1 for integer c (a param is rounded on the host).
    shifted = {"<": ("upper", offset - 1), "<=": ("upper", offset),
               ">": ("lower", offset + 1), ">=": ("lower", offset)}[op]
    side, value = shifted
    value = sympy.expand(value)
    if not value.free_symbols and not value.is_Integer:
        return None
    return side, value
