"""Syntax tree -> checked Cascade.

This is where names are resolved (index variable, dim, param or tensor), reductions are
made explicit, recurrences are checked, and the dataflow graph is built and ordered.
Every inconsistency becomes a `SpecError` pointing at the offending spot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from ..diagnostics import SpecError, Span, did_you_mean
from ..frontend import CALLABLE, RESERVED, ast
from . import expr as ir
from .cascade import Cascade, Einsum, ParamDecl, Rank, Split, Tensor, dataflow_graph
from .graph import Digraph
from . import divisors, intervals
from .constants import check_constants

_FUNCTION_ARITY = {**{name: 1 for name in ir.FUNCTIONS_1}, "max": 2, "min": 2, "where": 3}


def build(spec: ast.Spec, default_name: str = "attention") -> Cascade:
    """Check a parsed spec and build its Cascade, or raise `SpecError`."""
    try:
        return _Builder(spec, default_name).build()
    except SpecError as error:
        raise error.with_source(spec.source) from None


def size_symbol(name: str) -> sympy.Symbol:
    """The symbol for a rank's or an integer param's size."""
    return sympy.Symbol(name, integer=True, positive=True)


@dataclass
class _Context:
    """Where an expression stands, which decides what its names may mean."""
    kind: str  # 'param' | 'einsum' | 'init' | 'index'
    allow_reduce: bool = False


def _node_span(node) -> Span:
    return node.span


class _Builder:
    def __init__(self, spec: ast.Spec, default_name: str):
        self.spec = spec
        self.name = default_name
        self.name_span: Span | None = None
        self.ranks: dict[str, Rank] = {}
        self.var_rank: dict[str, str] = {}
        self.splits: list[Split] = []
        self.params: dict[str, ast.ParamStmt] = {}
        self.tensors: dict[str, Tensor] = {}
        self.einsum_stmts: dict[str, ast.EinsumStmt] = {}
        self.init_stmts: dict[str, ast.InitStmt] = {}
        self.outputs: ast.OutputStmt | None = None
        # name -> (what it is, where it was declared), for duplicate and clash messages
        self.declared: dict[str, tuple[str, Span]] = {}
        # rank -> first place it is used, for 'cannot be bound' messages
        self.rank_uses: dict[str, Span] = {}
        self.statement_order: dict[str, int] = {}

    # ================================================================ declarations
    def _declare(self, name: str, what: str, span: Span) -> None:
        if name in self.declared:
            kind, first = self.declared[name]
            raise SpecError(f"'{name}' is already defined as {kind}", span,
                            f"first defined at line {first.line}; rename one of them")
        self.declared[name] = (what, span)

    def _add_rank(self, name: str, size: sympy.Expr, span: Span, fixed: int | None = None,
                  split_of: str | None = None) -> None:
        self._declare(name, "a rank", span)
        var = name.lower()
        if var in RESERVED:
            raise SpecError(f"rank {name}'s index variable '{var}' is a reserved word", span,
                            "rename the rank: its index variable is its lower-case name")
        if var in self.declared and var != name:
            kind, first = self.declared[var]
            raise SpecError(f"rank {name}'s index variable '{var}' clashes with {kind} "
                            f"'{var}' (line {first.line})", span,
                            "index variables are the lower-case names of ranks; rename one")
        if var != name:
            self.declared[var] = (f"the index variable of rank {name}", span)
        self.var_rank[var] = name
        self.ranks[name] = Rank(name, size, fixed, split_of, span)

    def build(self) -> Cascade:
        statements = self.spec.statements
        for position, stmt in enumerate(statements):
            if isinstance(stmt, ast.AttentionStmt):
                if position != 0:
                    raise SpecError("'attention' must be the first statement", stmt.span,
                                    "move it to the top of the file")
                self.name, self.name_span = stmt.name, stmt.span
        dim_decls = [dim for stmt in statements if isinstance(stmt, ast.DimsStmt)
                     for dim in stmt.dims]
        for dim in dim_decls:
            if dim.size is not None and dim.size < 1:
                raise SpecError(f"dim {dim.name} has size {dim.size}", dim.span,
                                "a fixed size must be a positive integer")
            size = sympy.Integer(dim.size) if dim.size is not None \
                else size_symbol(dim.name)
            self._add_rank(dim.name, size, dim.span, fixed=dim.size)
        self._sized_dims([dim for dim in dim_decls if dim.expr is not None])
        for stmt in statements:
            if isinstance(stmt, ast.ParamStmt):
                self._declare(stmt.name, "a param", stmt.name_span)
                self.params[stmt.name] = stmt
        for stmt in statements:
            if isinstance(stmt, ast.SplitStmt):
                self._split(stmt)
        for stmt in statements:
            if isinstance(stmt, ast.InputStmt):
                for decl in stmt.inputs:
                    self._input(decl)
        for index, stmt in enumerate(statements):
            if isinstance(stmt, ast.EinsumStmt):
                self._define(stmt, index)
        for stmt in statements:
            if isinstance(stmt, ast.InitStmt):
                self._init_decl(stmt)
            elif isinstance(stmt, ast.OutputStmt):
                if self.outputs is not None:
                    raise SpecError("a second 'output' statement", stmt.span,
                                    f"list every output on one line (the first is at line "
                                    f"{self.outputs.span.line})")
                self.outputs = stmt

        params = {name: ParamDecl(name, self._param_default(stmt), stmt.span)
                  for name, stmt in self.params.items()}
        self._check_param_cycles(params)
        einsums = [self._einsum(self.einsum_stmts[name]) for name in self.einsum_stmts]
        self._check_inits()
        outputs = self._outputs()
        einsums = self._order(einsums)
        self._check_bindable()
        # Inputs first (declaration order), then defined tensors in dataflow order.
        ordered = {t.name: t for t in self.tensors.values() if t.is_input}
        ordered.update({e.tensor: self.tensors[e.tensor] for e in einsums})
        return Cascade(self.name, self.ranks, tuple(self.splits), params, ordered,
                       tuple(einsums), outputs, self.spec.source, name_span=self.name_span)

    # ================================================================ sized dims
    def _sized_dims(self, decls: list[ast.DimDecl]) -> None:
        """`dims P = M, G = H // KH` (LANGUAGE.md 1.1): each such dim's size is the
        sympy expression of the other dims' sizes (`//` as floor), its definition kept
        for binding and printing. Definitions may name dims of any `dims` statement, in
        any order; a cycle between them is an error. A definition with no dim in it
        (`E = 2 * 32`) is a fixed size like `E = 64`."""
        if not decls:
            return
        definitions = {dim.name: self._size_definition(dim) for dim in decls}
        graph = Digraph()
        for name, definition in definitions.items():
            graph.add_node(name)
            for node in ir.walk(definition):
                if isinstance(node, ir.Dim) and node.rank in definitions:
                    graph.add_edge(node.rank, name)
        cycle = graph.find_cycle()
        if cycle is not None:
            order = {dim.name: i for i, dim in enumerate(decls)}
            names = [edge[1] for edge in reversed(cycle)]   # "P uses Q uses ... P"
            first = min(names, key=order.__getitem__)
            names = names[names.index(first):] + names[:names.index(first)]
            decl = decls[order[first]]
            if len(names) == 1:
                message = f"dim {first} is defined by itself: {first} = " \
                          f"{ir.to_text(definitions[first])}"
            else:
                message = (f"a cycle between the sizes of dims: "
                           f"{' -> '.join(names + [first])} (each computed from the next)")
            raise SpecError(message, decl.span,
                            "a sized dim's size comes from other dims: give one of them "
                            "no '=' (its size then comes from an input) or an integer")
        by_name = {dim.name: dim for dim in decls}
        for name in graph.topological_order(key=lambda n: 0):
            self._size_dim(by_name[name], definitions[name])

    def _size_definition(self, dim: ast.DimDecl) -> ir.Expr:
        """A sized dim's definition as an IR expression of dims and integers, checked:
        only integers, dims declared with `dims`, `+ - * //` and parentheses."""
        allowed = "a dim's size uses integers, dims, + - * // and parentheses"

        def convert(node: ast.Expr) -> ir.Expr:
            if isinstance(node, ast.Number) and isinstance(node.value, int):
                return ir.Const(node.value, node.span)
            if isinstance(node, ast.Name):
                return ir.Dim(self._size_name(node, dim.name), node.span)
            if isinstance(node, ast.Unary):
                operand = convert(node.operand)
                return operand if node.op == "+" else ir.Op("neg", (operand,), node.span)
            if isinstance(node, ast.Binary) and node.op in ("+", "-", "*", "//"):
                return ir.Op(node.op, (convert(node.left), convert(node.right)), node.span)
            if isinstance(node, ast.Binary) and node.op == "/":
                raise SpecError(f"'/' in the size of dim {dim.name}", node.span,
                                "sizes are whole numbers: write '//' for floor division "
                                "(G = H // KH)")
            if isinstance(node, ast.Binary):
                raise SpecError(f"'{node.op}' in the size of dim {dim.name}", node.span,
                                allowed)
            raise SpecError(f"this is not allowed in the size of dim {dim.name}",
                            node.span, allowed)

        return convert(dim.expr)

    def _size_name(self, node: ast.Name, dim: str) -> str:
        """The dim a name in a sized dim's definition stands for, or a diagnostic."""
        _check_not_reserved(node)
        name, span = node.id, node.span
        rank = self.ranks.get(name)
        if rank is not None:          # only `dims` are declared yet: never a split part
            return name
        splits = {part: stmt.parent for stmt in self.spec.statements
                  if isinstance(stmt, ast.SplitStmt) for part in (stmt.outer, stmt.inner)}
        if name in splits:
            raise SpecError(f"'{name}' is a part of a split and cannot size dim {dim}",
                            span, f"a dim's size is computed from dims declared with "
                                  f"'dims'; use {splits[name]}, the split's parent")
        if name in self.var_rank:
            rank_name = self.var_rank[name]
            raise SpecError(f"'{name}' is an index variable, not a size", span,
                            f"the size of its rank is '{rank_name}': write "
                            f"'{dim} = ... {rank_name} ...'")
        params = {stmt.name for stmt in self.spec.statements
                  if isinstance(stmt, ast.ParamStmt)}
        if name in params:
            raise SpecError(f"param '{name}' in the size of dim {dim}", span,
                            "a dim's size uses integers and other dims; a param's value "
                            "is a float chosen per call")
        raise SpecError(f"unknown dim '{name}' in the size of dim {dim}", span,
                        did_you_mean(name, self.ranks)
                        or f"declare it with 'dims {name}'")

    def _size_dim(self, dim: ast.DimDecl, definition: ir.Expr) -> None:
        """Set a sized dim's Rank from its definition (its dims' sizes are set)."""
        text = ir.to_text(definition)
        for node in ir.walk(definition):
            if isinstance(node, ir.Op) and node.op == "//" and \
                    not divisors.positive_when_bound(node.args[1], self.ranks):
                raise SpecError(f"the divisor '{ir.to_text(node.args[1])}' in the size of "
                                f"dim {dim.name} cannot be proved positive",
                                node.args[1].span or dim.span,
                                "a divisor is a positive integer expression of dims: dims "
                                "and positive integers combined by +, * and // (as in "
                                "H // KH); a subtraction or a 0 can make it 0 or negative")
        if not any(isinstance(node, ir.Dim) for node in ir.walk(definition)):
            value = divisors.size_value(definition, {})
            if value < 1 or value > MAX_SIZE:
                shown = str(value) if text == str(value) else f"{text} = {value}"
                raise SpecError(f"dim {dim.name} has size {shown}", dim.expr.span,
                                "a fixed size must be a positive integer up to 2**53, "
                                "e.g. 'E = 64'")
            self.ranks[dim.name] = Rank(dim.name, sympy.Integer(value), value, None,
                                        dim.span)
            return
        bounds = intervals.interval(definition, self._size_bounds)
        if bounds is not None and intervals.provably(bounds[1] < 1):
            raise SpecError(f"the size of dim {dim.name}, {text}, is below 1 for every "
                            f"size of its dims", dim.expr.span,
                            "a dim's size must be a positive integer expression of dims")
        self.ranks[dim.name] = Rank(dim.name, _size_of(definition, self.ranks), None, None,
                                    dim.span, definition)

    def _size_bounds(self, node: ir.Expr):
        if isinstance(node, ir.Const):
            return sympy.Integer(node.value), sympy.Integer(node.value)
        size = self.ranks[node.rank].size
        return size, size

    def _split(self, stmt: ast.SplitStmt) -> None:
        if stmt.parent not in self.ranks:
            raise SpecError(f"split of unknown rank '{stmt.parent}'", stmt.parent_span,
                            did_you_mean(stmt.parent, self.ranks)
                            or "declare it first with 'dims'")
        factor = stmt.factor
        if isinstance(factor, int):
            if factor < 1:
                raise SpecError("a split factor must be a positive integer",
                                stmt.factor_span, "e.g. 'by 64'")
            inner_size: sympy.Expr = sympy.Integer(factor)
        elif factor in self.ranks:
            inner_size = self.ranks[factor].size
            self.rank_uses.setdefault(factor, stmt.factor_span)
        elif factor in self.params:
            inner_size = size_symbol(factor)
        else:
            raise SpecError(f"split factor '{factor}' is neither a dim nor a param",
                            stmt.factor_span,
                            did_you_mean(factor, list(self.ranks) + list(self.params))
                            or "give an integer, a dim or a param")
        if stmt.outer == stmt.inner:
            raise SpecError("the two parts of a split need different names",
                            stmt.inner_span, "e.g. 'split M -> M1, M0 by 64'")
        parent = self.ranks[stmt.parent]
        self._add_rank(stmt.inner, inner_size, stmt.inner_span, split_of=stmt.parent,
                       fixed=factor if isinstance(factor, int) else None)
        self._add_rank(stmt.outer, sympy.ceiling(parent.size / inner_size), stmt.outer_span,
                       split_of=stmt.parent)
        self.splits.append(Split(stmt.parent, stmt.outer, stmt.inner, factor, stmt.span))

    def _rank_of_index(self, node: ast.Expr, tensor: str) -> str:
        """The rank of a declaring index (input declaration, left side): a bare variable."""
        if isinstance(node, ast.Name):
            _check_not_reserved(node)
            if node.id in self.var_rank:
                rank = self.var_rank[node.id]
                self.rank_uses.setdefault(rank, node.span)
                return rank
            raise self._no_rank_error(node.id, node.span)
        raise SpecError(f"{tensor}'s indices here must be index variables, one per rank",
                        node.span, f"write e.g. {tensor}[b, h, p, e]")

    def _no_rank_error(self, name: str, span: Span) -> SpecError:
        if name in self.ranks:
            return SpecError(f"'{name}' is a rank; index it with its variable "
                             f"'{name.lower()}'", span,
                             f"write '{name.lower()}' (a rank's name as an index reads "
                             f"the final position of a recurrence)")
        variables = ", ".join(self.var_rank)
        if name.upper() in self.declared:
            hint = (f"index variables are the lower-case names of ranks: "
                    f"{variables or 'none declared'}")
        else:
            hint = did_you_mean(name, self.var_rank) or (
                f"index variables are the lower-case names of ranks ({variables}); "
                f"declare 'dims {name.upper()}' to use '{name}'")
        return SpecError(f"index variable '{name}' has no rank", span, hint)

    def _check_distinct(self, variables: list[str], nodes, tensor: str) -> None:
        seen: set[str] = set()
        for var, node in zip(variables, nodes):
            if var in seen:
                raise SpecError(f"index variable '{var}' appears twice in {tensor}'s indices",
                                node.span, "each position of a tensor needs its own rank")
            seen.add(var)

    def _input(self, decl: ast.InputDecl) -> None:
        self._declare(decl.name, "an input", decl.name_span)
        indices = decl.indices or ()
        ranks = [self._rank_of_index(node, decl.name) for node in indices]
        self._check_distinct([self.ranks[r].var for r in ranks], indices, decl.name)
        self.tensors[decl.name] = Tensor(decl.name, tuple(ranks), True, None, decl.span)

    def _lhs(self, lhs: ast.Lhs, init: bool) -> tuple[list[str], int | None]:
        """The variables of a left side, and the position of its iterative rank (x+1 in
        an Einsum, the literal 0 in an init)."""
        variables: list[str] = []
        iterative: int | None = None
        for position, node in enumerate(lhs.indices or ()):
            var: str | None = None
            if isinstance(node, ast.Name):
                var = node.id
            elif (not init and isinstance(node, ast.Binary) and node.op == "+"
                  and isinstance(node.left, ast.Name) and isinstance(node.right, ast.Number)
                  and node.right.value == 1):
                var = node.left.id
                if iterative is not None:
                    raise SpecError(f"{lhs.tensor} has two iterative positions", node.span,
                                    "a recurrence advances one rank: only one index may "
                                    "be 'x+1'")
                iterative = position
            elif init and isinstance(node, ast.Number) and node.value == 0:
                if iterative is not None:
                    raise SpecError(f"init of {lhs.tensor} has two positions '0'", node.span,
                                    "an init gives position 0 of the one iterative rank")
                iterative = position
                variables.append("")
                continue
            if var is None:
                raise SpecError(*self._lhs_problem(lhs, position, init))
            if var not in self.var_rank:
                _check_not_reserved(node if isinstance(node, ast.Name) else node.left)
                raise self._no_rank_error(var, node.span if isinstance(node, ast.Name)
                                          else node.left.span)
            self.rank_uses.setdefault(self.var_rank[var], node.span)
            variables.append(var)
        nodes = list(lhs.indices or ())
        named = [(v, n) for v, n in zip(variables, nodes) if v]
        self._check_distinct([v for v, _ in named], [n for _, n in named], lhs.tensor)
        return variables, iterative

    def _lhs_problem(self, lhs: ast.Lhs, position: int, init: bool) -> tuple:
        """Message, span and hint for a left-side index that is not a variable."""
        node = lhs.indices[position]
        if init:
            tensor = self.tensors.get(lhs.tensor)
            if tensor is not None and tensor.iterative is not None:
                parts = ["0" if i == tensor.iterative else self.ranks[r].var
                         for i, r in enumerate(tensor.ranks)]
                hint = (f"an init gives position 0: write init {lhs.tensor}"
                        f"[{', '.join(parts)}] = ...")
            else:
                hint = "an init gives position 0 of a recurrence's iterative rank"
            return ("the left side of an init must use index variables and one '0'",
                    node.span, hint)
        suggestion = []
        for index in lhs.indices:
            names = [n.id for n in _ast_names(index) if n.id in self.var_rank]
            suggestion.append(names[0] if names else "?")
        return (f"the left side of {lhs.tensor} must use index variables (or 'x+1' at one "
                f"position, for a recurrence)", node.span,
                f"write e.g. {lhs.tensor}[{', '.join(suggestion)}]; compute shifted or "
                f"strided positions on the right side")

    def _define(self, stmt: ast.EinsumStmt, order: int) -> None:
        lhs = stmt.lhs
        if lhs.tensor in self.tensors and self.tensors[lhs.tensor].is_input:
            raise SpecError(f"'{lhs.tensor}' is an input and cannot be defined",
                            lhs.name_span, "give the defined tensor another name")
        self._declare(lhs.tensor, "a tensor", lhs.name_span)
        variables, iterative = self._lhs(lhs, init=False)
        ranks = tuple(self.var_rank[v] for v in variables)
        self.tensors[lhs.tensor] = Tensor(lhs.tensor, ranks, False, iterative, lhs.span)
        self.einsum_stmts[lhs.tensor] = stmt
        self.statement_order[lhs.tensor] = order

    def _init_decl(self, stmt: ast.InitStmt) -> None:
        name = stmt.lhs.tensor
        if name not in self.einsum_stmts:
            raise SpecError(f"init of '{name}', which no Einsum defines", stmt.lhs.name_span,
                            did_you_mean(name, self.einsum_stmts)
                            or f"define the recurrence {name}[..., x+1, ...] = ...")
        if self.tensors[name].iterative is None:
            raise SpecError(f"init of '{name}', which is not a recurrence",
                            stmt.lhs.name_span,
                            f"an init gives position 0 of a tensor defined as "
                            f"{name}[..., x+1, ...]; remove it or make {name} iterative")
        if name in self.init_stmts:
            raise SpecError(f"a second init of '{name}'", stmt.span,
                            f"the first is at line {self.init_stmts[name].span.line}")
        self.init_stmts[name] = stmt

    # ================================================================ expressions
    def _param_default(self, stmt: ast.ParamStmt) -> ir.Expr | None:
        if stmt.default is None:
            return None
        default = self._numeric(stmt.default, _Context("param"), set())
        check_constants(default)
        return default

    def _check_param_cycles(self, params: dict[str, ParamDecl]) -> None:
        graph = Digraph()
        for name, decl in params.items():
            graph.add_node(name)
            if decl.default is not None:
                for node in ir.walk(decl.default):
                    if isinstance(node, ir.Param):
                        graph.add_edge(node.name, name)
        cycle = graph.find_cycle()
        if cycle is None:
            return
        # Edges run from a param to the params whose defaults use it; read them backwards
        # to say "X uses Y uses ... X".
        names = [edge[1] for edge in reversed(cycle)]
        name = names[0]
        raise SpecError(f"param '{name}' depends on itself: "
                        f"{' -> '.join(names + [name])}",
                        self.params[name].name_span, "give one of them a plain value")

    def _numeric(self, node: ast.Expr, ctx: _Context, lhs_vars: set[str]) -> ir.Expr:
        result = self._resolve(node, ctx, lhs_vars)
        if ir.is_boolean(result):
            raise SpecError("a condition is used where a number is expected", node.span,
                            "use where(cond, a, b) to turn a condition into a value")
        return result

    def _condition(self, node: ast.Expr, ctx: _Context, lhs_vars: set[str]) -> ir.Expr:
        result = self._resolve(node, ctx, lhs_vars)
        if not ir.is_boolean(result):
            raise SpecError("a number is used where a condition is expected", node.span,
                            "write a comparison, e.g. 'm <= p'")
        return result

    def _resolve(self, node: ast.Expr, ctx: _Context, lhs_vars: set[str]) -> ir.Expr:
        sub = _Context(ctx.kind)  # reductions are legal only at the root
        span = node.span
        if isinstance(node, ast.Number):
            return ir.Const(node.value, span)
        if isinstance(node, ast.Inf):
            return ir.Const(math.inf, span)
        if isinstance(node, ast.Name):
            return self._name(node, ctx)
        if isinstance(node, ast.Access):
            return self._access(node, ctx, lhs_vars)
        if isinstance(node, ast.Unary):
            operand = self._numeric(node.operand, sub, lhs_vars)
            return operand if node.op == "+" else ir.Op("neg", (operand,), span)
        if isinstance(node, ast.Binary):
            left = self._numeric(node.left, sub, lhs_vars)
            right = self._numeric(node.right, sub, lhs_vars)
            return ir.Op(node.op, (left, right), span)
        if isinstance(node, ast.Compare):
            left = self._numeric(node.left, sub, lhs_vars)
            right = self._numeric(node.right, sub, lhs_vars)
            return ir.Op(node.op, (left, right), span)
        if isinstance(node, ast.BoolOp):
            left = self._condition(node.left, sub, lhs_vars)
            right = self._condition(node.right, sub, lhs_vars)
            return ir.Op(node.op, (left, right), span)
        if isinstance(node, ast.Not):
            return ir.Op("not", (self._condition(node.operand, sub, lhs_vars),), span)
        if isinstance(node, ast.Call):
            return self._call(node, sub, lhs_vars)
        if isinstance(node, ast.Reduce):
            raise SpecError(f"'{node.op}[...]' inside an expression", node.span,
                            "a reduction may only stand first on the right of '=' and "
                            "applies to all of it; define an intermediate tensor for it")
        raise AssertionError(f"unhandled syntax node {type(node).__name__}")

    def _name(self, node: ast.Name, ctx: _Context) -> ir.Expr:
        name, span = node.id, node.span
        _check_not_reserved(node)
        if name in self.var_rank:
            if ctx.kind == "param":
                raise SpecError(f"index variable '{name}' in a param's default", span,
                                "a param's default may use numbers, dims and other params")
            self.rank_uses.setdefault(self.var_rank[name], span)
            return ir.Index(name, span)
        if name in self.ranks:
            self.rank_uses.setdefault(name, span)
            return ir.Dim(name, span)
        if name in self.params:
            if ctx.kind == "index":
                raise SpecError(f"param '{name}' in a tensor index", span,
                                "index positions use index variables, dims and integers; "
                                "declare it as a fixed dim instead ('dims X = 4')")
            return ir.Param(name, span)
        if name in self.tensors:
            tensor = self.tensors[name]
            if ctx.kind == "param":
                raise SpecError(f"tensor '{name}' in a param's default", span,
                                "a param's default may use numbers, dims and other params")
            if ctx.kind == "index":
                raise SpecError(f"tensor '{name}' read inside a tensor index", span,
                                "index positions are affine in index variables; reading a "
                                "tensor there (a gather) is not supported in version 1")
            if not tensor.is_scalar:
                variables = ", ".join(self.ranks[r].var for r in tensor.ranks)
                raise SpecError(f"tensor '{name}' has {len(tensor.ranks)} rank(s) and needs "
                                f"indices", span, f"write {name}[{variables}]")
            return ir.Read(name, (), span)
        if name.islower() and len(name) <= 3 and ctx.kind != "param":
            raise self._no_rank_error(name, span)
        if ctx.kind == "param":
            known = list(self.ranks) + list(self.params)
            fallback = f"declare it with 'dims {name}' or 'param {name}'"
        else:
            known = list(self.var_rank) + list(self.ranks) + list(self.params) + \
                list(self.tensors)
            fallback = "declare it as a dim, param, input or tensor"
        raise SpecError(f"unknown name '{name}'", span,
                        did_you_mean(name, known) or fallback)

    def _access(self, node: ast.Access, ctx: _Context, lhs_vars: set[str]) -> ir.Expr:
        name = node.tensor
        if ctx.kind == "param":
            raise SpecError(f"tensor '{name}' in a param's default", node.span,
                            "a param's default may use numbers, dims and other params")
        if ctx.kind == "index":
            raise SpecError(f"tensor '{name}' read inside a tensor index", node.span,
                            "index positions are affine in index variables; reading a "
                            "tensor there (a gather) is not supported in version 1")
        if name not in self.tensors:
            if name in self.ranks or name in self.params or name in self.var_rank:
                raise SpecError(f"'{name}' is not a tensor and cannot be indexed",
                                node.name_span, "only inputs and defined tensors take [ ]")
            raise SpecError(f"unknown tensor '{name}'", node.name_span,
                            did_you_mean(name, self.tensors)
                            or "declare it with 'input' or define it with an Einsum")
        tensor = self.tensors[name]
        if len(node.indices) != len(tensor.ranks):
            expected = ", ".join(self.ranks[r].var for r in tensor.ranks)
            raise SpecError(f"{name} has {len(tensor.ranks)} rank(s) but is indexed with "
                            f"{len(node.indices)}", node.span,
                            f"write {name}[{expected}]" if expected
                            else f"{name} is a scalar: write {name} without brackets")
        indices = tuple(self._index(index, lhs_vars) for index in node.indices)
        return ir.Read(name, indices, node.span)

    def _index(self, node: ast.Expr, lhs_vars: set[str]) -> ir.Expr:
        result = self._numeric(node, _Context("index"), lhs_vars)
        _check_affine(result, node, self.ranks)
        return result

    def _call(self, node: ast.Call, ctx: _Context, lhs_vars: set[str]) -> ir.Expr:
        func = node.func
        if func not in CALLABLE:
            if func in self.tensors:
                raise SpecError(f"tensor '{func}' is called like a function",
                                node.name_span, f"index tensors with brackets: {func}[...]")
            raise SpecError(f"unknown function '{func}'", node.name_span,
                            did_you_mean(func, CALLABLE, cutoff=0.65)
                            or f"functions are: {', '.join(sorted(CALLABLE))}")
        arity = _FUNCTION_ARITY[func]
        if len(node.args) != arity:
            raise SpecError(f"{func}() takes {arity} argument(s), got {len(node.args)}",
                            node.span, _CALL_HINTS.get(func, f"write {func}(x) with one "
                                                             f"argument"))
        if func == "where":
            cond = self._condition(node.args[0], ctx, lhs_vars)
            args = (cond,) + tuple(self._numeric(a, ctx, lhs_vars) for a in node.args[1:])
        else:
            args = tuple(self._numeric(a, ctx, lhs_vars) for a in node.args)
        return ir.Op(func, args, node.span)

    # ================================================================ einsums
    def _einsum(self, stmt: ast.EinsumStmt) -> Einsum:
        lhs = stmt.lhs
        variables, iterative = self._lhs(lhs, init=False)
        lhs_set = set(variables)
        rhs = stmt.rhs
        reduce_op: str | None = None
        named: tuple[ast.Name, ...] = ()
        if isinstance(rhs, ast.Reduce):
            reduce_op, named, rhs = rhs.op, rhs.variables, rhs.body
        ctx = _Context("einsum")
        body = self._numeric(rhs, ctx, lhs_set)
        filt = self._condition(stmt.filter, ctx, lhs_set) if stmt.filter else None

        right_vars: list[str] = []
        for expr in (body, filt):
            if expr is not None:
                for var in ir.index_vars(expr):
                    if var not in right_vars:
                        right_vars.append(var)
        right_only = [v for v in right_vars if v not in lhs_set]
        if reduce_op is None:
            reduced = tuple(right_only)
            if reduced:
                reduce_op = "sum"
            explicit = False
        else:
            reduced_list: list[str] = []
            for name in named:
                if name.id not in self.var_rank:
                    raise self._no_rank_error(name.id, name.span)
                if name.id in lhs_set:
                    raise SpecError(f"'{name.id}' is reduced but also on the left of "
                                    f"{lhs.tensor}", name.span,
                                    f"remove '{name.id}' from {reduce_op}[...] or from the "
                                    f"left side")
                if name.id in reduced_list:
                    raise SpecError(f"'{name.id}' is named twice in {reduce_op}[...]",
                                    name.span, "name each reduced variable once")
                self.rank_uses.setdefault(self.var_rank[name.id], name.span)
                reduced_list.append(name.id)
            missing = [v for v in right_only if v not in reduced_list]
            if missing:
                listed = ", ".join(reduced_list + missing)
                raise SpecError(f"'{missing[0]}' appears only on the right but "
                                f"{reduce_op}[...] does not name it", stmt.rhs.span,
                                f"an explicit reduction names every right-only variable: "
                                f"write {reduce_op}[{listed}]")
            reduced = tuple(reduced_list)
            explicit = True

        if iterative is not None:
            self._check_recurrence(lhs.tensor, variables[iterative], iterative,
                                   [body] + ([filt] if filt is not None else []))
        elif lhs.tensor in ir.tensors_read(body) or (
                filt is not None and lhs.tensor in ir.tensors_read(filt)):
            own = next(r for e in (body, filt) if e is not None for r in ir.reads(e)
                       if r.tensor == lhs.tensor)
            raise SpecError(f"{lhs.tensor} reads itself", own.span or lhs.name_span,
                            f"only a recurrence may read itself: define "
                            f"{lhs.tensor}[..., x+1, ...] from {lhs.tensor}[..., x, ...] "
                            f"with an init")

        init = None
        if iterative is not None:
            init_stmt = self.init_stmts.get(lhs.tensor)
            if init_stmt is not None:
                init = self._init_value(init_stmt, variables, iterative)
        for part in (body, filt, init):
            if part is not None:
                check_constants(part)
        return Einsum(lhs.tensor, tuple(variables), body, reduce_op, reduced, filt,
                      iterative, init, explicit, stmt.span)

    def _check_recurrence(self, tensor: str, x: str, position: int, exprs) -> None:
        """A recurrence may read itself only at positions <= x at its iterative rank."""
        for expr in exprs:
            for read in ir.reads(expr):
                if read.tensor != tensor:
                    continue
                offset = _constant_offset(read.indices[position], x)
                if offset is None or offset > 0:
                    span = read.indices[position].span or read.span
                    raise SpecError(f"the recurrence {tensor} reads itself at "
                                    f"'{ir.to_text(read.indices[position])}'", span,
                                    f"step {x}+1 may read {tensor} only at positions up to "
                                    f"{x} (e.g. {tensor}[..., {x}, ...]); it has no later "
                                    f"value yet")

    def _init_value(self, stmt: ast.InitStmt, variables: list[str],
                    iterative: int) -> ir.Expr:
        init_vars, init_position = self._lhs(stmt.lhs, init=True)
        name = stmt.lhs.tensor
        if len(init_vars) != len(variables):
            raise SpecError(f"init of {name} has {len(init_vars)} indices but {name} has "
                            f"{len(variables)}", stmt.lhs.span,
                            "an init indexes the tensor like its recurrence, with 0 at "
                            "the iterative position")
        nodes = stmt.lhs.indices or ()
        if init_position != iterative:
            raise SpecError(f"init of {name} puts '0' at position {init_position + 1} but "
                            f"the recurrence advances position {iterative + 1}",
                            nodes[init_position].span if init_position is not None
                            else stmt.lhs.span,
                            "the 0 goes where the recurrence has 'x+1'")
        for position, (mine, theirs) in enumerate(zip(init_vars, variables)):
            if position != iterative and mine != theirs:
                raise SpecError(f"init of {name} uses '{mine}' where the recurrence uses "
                                f"'{theirs}'", nodes[position].span,
                                f"use the same variable at each position: '{theirs}'")
        allowed = set(variables) - {variables[iterative]}
        value = self._numeric(stmt.value, _Context("init"), allowed)
        for var in ir.index_vars(value):
            if var not in allowed:
                node = next(n for n in ir.walk(value)
                            if isinstance(n, ir.Index) and n.var == var)
                raise SpecError(f"'{var}' in the init of {name} is not on its left side",
                                node.span or stmt.span,
                                "an init is elementwise over the left side's other "
                                "variables; it has no reduction")
        if name in ir.tensors_read(value):
            raise SpecError(f"the init of {name} reads {name}", stmt.value.span,
                            "position 0 must come from other tensors or constants")
        return value

    def _check_inits(self) -> None:
        for name, tensor in self.tensors.items():
            if tensor.iterative is not None and name not in self.init_stmts:
                stmt = self.einsum_stmts[name]
                indices = ["0" if i == tensor.iterative else self.ranks[r].var
                           for i, r in enumerate(tensor.ranks)]
                raise SpecError(f"the recurrence {name} has no init", stmt.lhs.span,
                                f"give position 0: 'init {name}[{', '.join(indices)}] = 0'")

    def _outputs(self) -> tuple[str, ...]:
        if self.outputs is None:
            last = self.spec.source.text.rstrip().count("\n") + 1
            raise SpecError("the spec has no 'output' statement", Span.point(last, 1),
                            "name the results at the end, e.g. 'output AV'")
        names: list[str] = []
        for name, span in self.outputs.names:
            if name not in self.tensors:
                raise SpecError(f"output '{name}' is never defined", span,
                                did_you_mean(name, self.einsum_stmts)
                                or "define it with an Einsum")
            if self.tensors[name].is_input:
                raise SpecError(f"output '{name}' is an input", span,
                                "outputs are tensors the cascade computes")
            if name in names:
                raise SpecError(f"output '{name}' is listed twice", span,
                                "list each output once")
            names.append(name)
        return tuple(names)

    def _order(self, einsums: list[Einsum]) -> list[Einsum]:
        graph = dataflow_graph(self.tensors.values(), einsums).without_self_loops()
        cycle = graph.find_cycle()
        if cycle:
            names = [edge[0] for edge in cycle]
            first = min(names, key=lambda n: self.statement_order.get(n, 0))
            path = " -> ".join(names[names.index(first):] + names[:names.index(first)]
                               + [first])
            raise SpecError(f"a cycle between tensors: {path}",
                            self.einsum_stmts[first].lhs.name_span,
                            "a tensor cannot depend on itself through others; a "
                            "recurrence reads only itself at earlier positions")
        order = {name: i for i, name in enumerate(self.statement_order)}
        by_name = {e.tensor: e for e in einsums}
        ordered = graph.topological_order(
            key=lambda n: (0, 0) if n not in order else (1, order[n]))
        return [by_name[name] for name in ordered if name in by_name]

    def _check_bindable(self) -> None:
        """Every rank in use must get a size: fixed, from an input's shape, or from a
        split of a rank that gets one."""
        split_parts = {part: s for s in self.splits for part in (s.outer, s.inner)}
        sized = {name: {n.rank for n in ir.walk(rank.definition) if isinstance(n, ir.Dim)}
                 for name, rank in self.ranks.items() if rank.sized}
        bound = {name for name, rank in self.ranks.items()
                 if rank.fixed is not None and name not in split_parts}
        for tensor in self.tensors.values():
            if tensor.is_input:
                # A split's parts get their sizes from the parent, never the other way
                # (M1 = ceil(M / M0) does not determine M); a sized dim's from its dims.
                bound.update(r for r in tensor.ranks if r not in split_parts
                             and r not in sized)
        changed = True
        while changed:
            changed = False
            for name, uses in sized.items():
                if name not in bound and uses <= bound:
                    bound.add(name)
                    changed = True
            for split in self.splits:
                factor_ok = not isinstance(split.factor, str) or split.factor in bound \
                    or split.factor in self.params
                if split.parent in bound and factor_ok:
                    for part in (split.outer, split.inner):
                        if part not in bound:
                            bound.add(part)
                            changed = True
        for rank, span in self.rank_uses.items():
            if rank not in bound and rank in split_parts:
                parent = split_parts[rank].parent
                root = parent
                while root in split_parts:
                    root = split_parts[root].parent
                raise SpecError(f"the size of rank {rank} cannot be bound", span,
                                f"{rank} is a part of the split of {parent}, whose size "
                                f"comes from {root}: add an input indexed by "
                                f"'{root.lower()}' or declare 'dims {root} = 64'")
            if rank not in bound and rank in sized:
                missing, stack = set(), [rank]
                while stack:           # the unbound dims it is computed from, at the root
                    for dim in sized[stack.pop()] - bound:
                        if dim in sized:
                            stack.append(dim)
                        else:
                            missing.add(dim)
                first = sorted(missing)[0]
                raise SpecError(f"the size of rank {rank} cannot be bound", span,
                                f"{rank} = {ir.to_text(self.ranks[rank].definition)} is "
                                f"computed from its dims, never bound from an input, and "
                                f"nothing gives {', '.join(sorted(missing))} a size: add an "
                                f"input indexed by '{first.lower()}' or declare "
                                f"'dims {first} = 16'")
            if rank not in bound:
                raise SpecError(f"the size of rank {rank} cannot be bound", span,
                                f"no input has rank {rank} and it has no fixed size: add an "
                                f"input indexed by '{rank.lower()}' or declare "
                                f"'dims {rank} = 16'")


_CALL_HINTS = {
    "where": "write where(condition, value_if_true, value_if_false)",
    "max": "max(a, b) takes two values; for a reduction write 'max[m] X[..., m]'",
    "min": "min(a, b) takes two values; for a reduction write 'min[m] X[..., m]'",
}


# The largest fixed size (parser.MAX_EXACT_INTEGER): sizes stay exact integers.
MAX_SIZE = 2**53


def _size_of(definition: ir.Expr, ranks: dict[str, Rank]) -> sympy.Expr:
    """A sized dim's size: its definition over the sizes of its dims, `//` as floor."""
    if isinstance(definition, ir.Const):
        return sympy.Integer(definition.value)
    if isinstance(definition, ir.Dim):
        return ranks[definition.rank].size
    args = [_size_of(arg, ranks) for arg in definition.args]
    if definition.op == "neg":
        return -args[0]
    a, b = args
    if definition.op == "//":
        return sympy.floor(a / b)
    return {"+": a + b, "-": a - b, "*": a * b}[definition.op]


def _constant_offset(index: ir.Expr, var: str) -> int | None:
    """For a recurrence's read of itself at its iterative position: c where the index is
    `var + c` for an integer c; -1 for the literal 0 (position 0 always exists before
    step 0); None for any other form."""
    if isinstance(index, ir.Const) and index.value == 0:
        return -1
    if isinstance(index, ir.Index) and index.var == var:
        return 0
    if isinstance(index, ir.Op) and index.op in ("+", "-") and len(index.args) == 2:
        left, right = index.args
        if isinstance(left, ir.Index) and left.var == var and isinstance(right, ir.Const) \
                and isinstance(right.value, int):
            return right.value if index.op == "+" else -right.value
    return None


def _check_affine(expr: ir.Expr, node: ast.Expr, ranks: dict[str, Rank]) -> None:
    """Index positions: affine in index variables with integer or dim coefficients,
    optionally `// d` or `% d` by a positive integer expression of dims (divisors.py)."""

    def has_var(e: ir.Expr) -> bool:
        return any(isinstance(n, ir.Index) for n in ir.walk(e))

    def fail(e: ir.Expr, why: str) -> SpecError:
        return SpecError(f"tensor index '{ir.to_text(expr)}' is not affine: {why}",
                         e.span or node.span,
                         "index positions are sums of index variables times integers or "
                         "dims, optionally '// d' or '% d' by a positive integer "
                         "expression of dims")

    stack = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, ir.Const):
            if not isinstance(e.value, int):
                raise fail(e, f"{ir.to_text(e)} is not an integer")
        elif isinstance(e, ir.Op):
            if e.op in ("+", "-", "neg"):
                stack.extend(e.args)
            elif e.op == "*":
                if has_var(e.args[0]) and has_var(e.args[1]):
                    raise fail(e, "it multiplies two index variables")
                stack.extend(e.args)
            elif e.op in ("//", "%"):
                _check_divisor(e.op, e.args[1], fail, ranks)
                stack.append(e.args[0])
            else:
                raise fail(e, f"'{e.op}' is not allowed in an index")
        elif not isinstance(e, (ir.Index, ir.Dim)):
            raise fail(e, f"'{ir.to_text(e)}' is not allowed in an index")


def _check_divisor(op: str, divisor: ir.Expr, fail, ranks: dict[str, Rank]) -> None:
    """A divisor is an integer expression of dims (`+ - * //`) that is positive, proved
    from the declarations, or once its floor quotients are (checked when sizes are
    bound); see divisors.py."""
    bad = divisors.size_expression_problem(divisor)
    if bad is not None:
        raise fail(bad, f"'{op}' needs a positive integer expression of dims on its "
                        f"right, and '{ir.to_text(bad)}' is not one (a divisor uses dims, "
                        f"integers and + - * //)")
    if not divisors.positive_when_bound(divisor, ranks):
        text = ir.to_text(divisor)
        raise SpecError(f"the divisor '{text}' of '{op}' cannot be proved positive",
                        divisor.span, "a divisor is a positive integer expression of "
                        "dims: dims and positive integers combined by +, * and // (as "
                        "in H // KH); a subtraction or a 0 can make it 0 or negative")


def _ast_names(node: ast.Expr) -> list[ast.Name]:
    """The bare names inside a syntax-tree expression, in order."""
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Name):
            found.append(current)
        stack.extend(reversed(ast.children(current)))
    return found


def _check_not_reserved(node: ast.Name) -> None:
    if node.id in RESERVED:
        raise SpecError(f"'{node.id}' is a reserved word and cannot name a value", node.span,
                        f"rename it, e.g. '{node.id}_'")
