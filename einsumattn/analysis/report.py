"""The analysis report: passes, buffers and cost of a cascade, in four formats.

text  a compact report a person reads in ten seconds
json  a stable schema (docs/analysis.md): top-level "passes" maps rank -> int
md    the same content as Markdown tables, for docs
dot   the dataflow graph, Einsums coloured by pass over the primary rank, read-read
      dependencies drawn as bold red edges
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sympy

from ..ir import Cascade
from ..ir.build import size_symbol
from ..ir.printer import lhs_text, rhs_text
from .buffers import RankBuffers
from .cost import CATEGORIES, Cost
from .passes import RankPasses

SCHEMA = "einsumattn.analysis/1"
_PASS_COLOURS = ["#cfe8ff", "#ffe2b8", "#d7f5d0", "#f6d0f0", "#fff6a8", "#e0e0e0"]


@dataclass
class Report:
    cascade: Cascade
    dtype: str
    ranks: dict[str, RankPasses]
    rank_buffers: dict[str, RankBuffers]
    cost: Cost
    sizes: dict[str, int] | None = None   # bound sizes (ranks and tile sizes), if given

    # ------------------------------------------------------------------ facts
    @property
    def passes(self) -> dict[str, int]:
        return {rank: info.passes for rank, info in self.ranks.items()}

    @property
    def primary_rank(self) -> str | None:
        """The rank the report leads with, among unsplit ranks: most passes; then ranks a
        recurrence or split streams over; then ranks absent from the outputs; then
        declaration order."""
        if not self.ranks:
            return None
        cascade = self.cascade
        output_ranks = {r for name in cascade.outputs for r in cascade.tensors[name].ranks}
        streamed = {cascade.root_rank(cascade.var_rank(e.iter_var)) for e in cascade.einsums
                    if e.iter_var is not None} | {s.parent for s in cascade.splits}
        order = list(cascade.ranks)
        # A split's parts are tiles of their parent: lead with the parent (M, not M0).
        roots = [r for r in self.ranks if cascade.ranks[r].split_of is None] or \
            list(self.ranks)
        return min(roots, key=lambda r: (-self.ranks[r].passes, r not in streamed,
                                              r in output_ranks, order.index(r)))

    @property
    def buffers(self) -> RankBuffers | None:
        """Buffers of the primary rank."""
        rank = self.primary_rank
        return self.rank_buffers[rank] if rank else None

    # ------------------------------------------------------------------ values
    def value(self, expr: sympy.Expr) -> float | None:
        """The number a formula takes at the bound sizes (None if not bound)."""
        if self.sizes is None:
            return None
        subs = {size_symbol(name): value for name, value in self.sizes.items()}
        result = sympy.sympify(expr).subs(subs)
        return float(result) if result.is_number else None

    def _fmt(self, expr: sympy.Expr) -> str:
        text = str(expr)
        value = self.value(expr)
        if value is None:
            return text
        return f"{text} = {_number(value)}"

    # ------------------------------------------------------------------ json
    def to_dict(self) -> dict:
        def formula(expr):
            entry = {"formula": str(expr)}
            value = self.value(expr)
            if value is not None:
                entry["value"] = value
            return entry

        ranks = {}
        for rank, info in self.ranks.items():
            buffers = self.rank_buffers[rank]
            ranks[rank] = {
                "passes": info.passes,
                "variables": list(info.variables),
                "full_reductions": list(info.full_reductions),
                "einsums_by_pass": {str(k): info.einsums_in_pass(k)
                                    for k in range(1, info.passes + 1)},
                "dependencies": [{"producer": d.producer, "consumer": d.consumer,
                                  "via": list(d.via), "kind": d.kind,
                                  "fibers": list(d.fibers), "pass": d.new_pass,
                                  "reason": d.explain()} for d in info.dependencies],
                "buffers": {
                    "parallel": {r: str(t) for r, t in buffers.tile.items()},
                    "boundaries": [{
                        "after_pass": b.after_pass,
                        "live": [{"tensor": t.name, "elements": formula(t.footprint),
                                  "spill_bytes": formula(t.spill_bytes),
                                  "read_in_passes": list(t.passes_reading)} for t in b.live],
                        "elements": formula(b.footprint),
                        "spill_bytes": formula(b.spill_bytes),
                        "inputs_read_again": [{"tensor": n, "bytes": formula(v)}
                                              for n, v in b.reread_inputs],
                    } for b in buffers.boundaries],
                    "pass_state": {str(k): formula(v) for k, v in buffers.pass_state.items()},
                    "onchip_state": formula(buffers.onchip_state),
                    "grows_with_rank": buffers.grows_with_rank,
                },
            }
        cost = self.cost
        return {
            "schema": SCHEMA,
            "name": self.cascade.name,
            "source": self.cascade.source.filename if self.cascade.source else None,
            "dtype": self.dtype,
            "bytes_per_element": cost.bytes_per_element,
            "sizes": self.sizes,
            "passes": self.passes,
            "primary_rank": self.primary_rank,
            "ranks": ranks,
            "cost": {
                "einsums": {name: {"points": formula(c.points),
                                   **{k: formula(v) for k, v in c.counts.items()},
                                   "flops": formula(c.flops)}
                            for name, c in cost.einsums.items()},
                "total": {k: formula(v) for k, v in cost.total.items()},
                "flops": formula(cost.flops),
                "min_bytes": formula(cost.bytes),
                "intensity": formula(cost.intensity),
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # ------------------------------------------------------------------ text
    def to_text(self) -> str:
        return self.passes_text() + "\n\n" + self.cost_text()

    def passes_text(self) -> str:
        """The text report's passes and buffers (what the generated module's docstring
        shows), without the cost, whose intensity formula is the costliest to tidy."""
        cascade = self.cascade
        lines = [f"{cascade.name}: pass analysis (FuseMax section III), {self.dtype}"]
        if self.sizes:
            lines[0] += ", sizes " + ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        lines.append("")
        rows = [("rank", "passes", "full reductions", "on-chip state / program",
                 "grows with rank")]
        for rank, info in self.ranks.items():
            buffers = self.rank_buffers[rank]
            rows.append((rank, str(info.passes), ", ".join(info.full_reductions) or "-",
                         self._fmt(buffers.onchip_state),
                         "yes" if buffers.grows_with_rank else "no"))
        lines += _table(rows)
        for rank, info in self.ranks.items():
            if info.passes < 2:
                continue
            lines.append("")
            lines.append(f"Why {rank} needs {info.passes} passes:")
            for dep in info.dependencies:
                lines.append(f"  - {dep.explain()}")
            groups = "   ".join(f"{k}: {' '.join(info.einsums_in_pass(k))}"
                                for k in range(1, info.passes + 1))
            lines.append(f"  passes: {groups}")
            buffers = self.rank_buffers[rank]
            per = ", ".join(f"{t} of {r}" for r, t in buffers.tile.items()) or "everything"
            lines.append(f"  buffers per program ({per}):")
            for b in buffers.boundaries:
                live = ", ".join(f"{t.name} ({t.footprint})" for t in b.live) or "nothing"
                lines.append(f"    after pass {b.after_pass}: {live}")
                if b.live:
                    lines.append(f"      keep {self._fmt(b.footprint)} elements on chip, or "
                                 f"spill and re-read {self._fmt(b.spill_bytes)} bytes")
                for name, extra in b.reread_inputs:
                    lines.append(f"      input {name} is read again: {self._fmt(extra)} bytes")
        return "\n".join(lines)

    def cost_text(self) -> str:
        """The text report's cost: operation counts, traffic and intensity."""
        lines = ["Cost (dense iteration spaces; filters not subtracted):"]
        rows = [("einsum", "points", "per point")]
        for name, c in self.cost.einsums.items():
            ops = " + ".join(f"{n} {k}" for k, n in c.per_point.items() if n) or "copy"
            rows.append((name, self._fmt(c.points), ops))
        lines += _table(rows)
        for k in CATEGORIES:
            if self.cost.total[k] != 0:
                lines.append(f"{k:<10} {self._fmt(self.cost.total[k])}")
        lines.append(f"FLOPs      {self._fmt(self.cost.flops)}")
        lines.append(f"min bytes  {self._fmt(self.cost.bytes)}  (inputs read once, outputs "
                     f"written once, {self.cost.bytes_per_element} B/element)")
        lines.append(f"intensity  {self._fmt(self.cost.intensity)} FLOP/byte")
        return "\n".join(lines)

    # ------------------------------------------------------------------ markdown
    def to_markdown(self) -> str:
        cascade = self.cascade
        out = [f"## {cascade.name}", "", f"Pass analysis (FuseMax section III), {self.dtype}.",
               "", "| rank | passes | full reductions | on-chip state per program | grows |",
               "|---|---|---|---|---|"]
        for rank, info in self.ranks.items():
            b = self.rank_buffers[rank]
            out.append(f"| {rank} | {info.passes} | {', '.join(info.full_reductions) or '-'} "
                       f"| `{self._fmt(b.onchip_state)}` | "
                       f"{'yes' if b.grows_with_rank else 'no'} |")
        for rank, info in self.ranks.items():
            if info.dependencies:
                out += ["", f"**{rank}: {info.passes} passes.**", ""]
                out += [f"- {d.explain()}" for d in info.dependencies]
                for b in self.rank_buffers[rank].boundaries:
                    live = ", ".join(f"{t.name} (`{t.footprint}`)" for t in b.live) or "nothing"
                    out.append(f"- after pass {b.after_pass}: keep {live}; or spill "
                               f"`{self._fmt(b.spill_bytes)}` bytes")
        shown = [c for c in CATEGORIES
                 if any(e.counts[c] != 0 for e in self.cost.einsums.values())]
        out += ["", "| einsum | points | " + " | ".join(shown) + " |",
                "|---|---|" + "---|" * len(shown)]
        for name, c in self.cost.einsums.items():
            cells = [f"`{c.counts[k]}`" if c.counts[k] != 0 else "-" for k in shown]
            out.append(f"| {name} | `{c.points}` | " + " | ".join(cells) + " |")
        out += ["", f"FLOPs `{self._fmt(self.cost.flops)}`, minimum bytes "
                    f"`{self._fmt(self.cost.bytes)}`, intensity "
                    f"`{self._fmt(self.cost.intensity)}` FLOP/byte."]
        return "\n".join(out) + "\n"

    # ------------------------------------------------------------------ dot
    def to_dot(self) -> str:
        cascade = self.cascade
        rank = self.primary_rank
        info = self.ranks.get(rank) if rank else None
        forcing = {(d.producer, d.consumer) for d in info.dependencies} if info else set()
        out = [f'digraph "{cascade.name}" {{', "  rankdir=TB;",
               '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
               f'  label="{cascade.name}: passes over {rank}: '
               f'{info.passes if info else "-"}"; labelloc=t;']
        for tensor in cascade.inputs:
            out.append(f'  "{tensor.name}" [shape=ellipse, fillcolor="#ffffff"];')
        for einsum in cascade.einsums:
            number = info.pass_of.get(einsum.tensor) if info else None
            colour = _PASS_COLOURS[(number - 1) % len(_PASS_COLOURS)] if number else "#f4f4f4"
            label = f"{lhs_text(cascade, einsum)} = {rhs_text(einsum)}"
            if number:
                label += f"\\npass {number}"
            label = label.replace('"', '\\"')
            out.append(f'  "{einsum.tensor}" [label="{label}", fillcolor="{colour}"];')
        read_read = ('color=red, penwidth=2.5, style=bold, label="read-read", '
                     'fontcolor=red')
        for producer, consumer in cascade.graph.edges:
            if producer == consumer:
                out.append(f'  "{producer}" -> "{consumer}" [style=dashed, '
                           f'label="recurrence"];')
            elif (producer, consumer) in forcing:
                out.append(f'  "{producer}" -> "{consumer}" [{read_read}];')
            else:
                out.append(f'  "{producer}" -> "{consumer}";')
        # A dependency through other tensors (ECA: GAP -> Y -> S -> O) gets its own edge.
        for producer, consumer in sorted(forcing - set(cascade.graph.edges)):
            out.append(f'  "{producer}" -> "{consumer}" [{read_read}, constraint=false];')
        out.append("}")
        return "\n".join(out) + "\n"

    def render(self, fmt: str) -> str:
        return {"text": self.to_text, "json": self.to_json, "md": self.to_markdown,
                "dot": self.to_dot}[fmt]()


def _number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines
