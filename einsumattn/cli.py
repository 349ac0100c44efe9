"""The `einsumattn` command line.

Exit status: 0 success; 2 a problem in the spec or the arguments, including a path the
command cannot write (a diagnostic on stderr saying what to do); 1 a failed check (`check`
found a mismatch) or an internal error (a bug in einsumattn: reported without a traceback
unless EINSUMATTN_DEBUG=1 is set). Warnings about the spec are printed on stderr and leave
the status alone; with `--werror` they are errors (status 2).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import traceback
import warnings
from pathlib import Path

from . import __version__
from .diagnostics import BindError, SpecError, SpecWarning

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2

# The float64 oracle broadcasts index arrays over an Einsum's whole iteration space, and
# numpy broadcasts at most 32 dimensions (NPY_MAXDIMS of numpy 1; numpy 2 keeps 32 for
# np.broadcast, 64 for arrays). `eval` and `check` say so before they start.
ORACLE_MAX_DIMS = 32


class UsageError(Exception):
    """An argument the command cannot use (a path it cannot write, say): exit 2 with this
    sentence, which says what to do."""


# A full disk or quota: never einsumattn's bug, though the error names no file.
_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def _writing_to(path: str | os.PathLike, advice: str):
    """OS errors on a path the user chose (no permission, a file where a folder must be)
    and a full disk are the user's to fix: a UsageError naming the path, with `advice`.
    OS errors on any other path stay internal errors."""
    try:
        yield
    except OSError as error:
        if not (_within(error.filename, path) or error.errno in _FULL):
            raise
        reason = error.strerror or type(error).__name__
        raise UsageError(f"cannot write '{error.filename or path}': {reason}; "
                         f"{advice}") from None


def _within(filename, path) -> bool:
    """Whether `filename` is `path`, inside it, or one of its parent folders."""
    if filename is None:
        return False
    filename, path = Path(os.path.abspath(filename)), Path(os.path.abspath(path))
    return filename == path or path in filename.parents or filename in path.parents


def _write_text(path: str, text: str) -> None:
    """An -o file of analyze or rewrite: its folder is made if missing, like compile's."""
    with _writing_to(path, "give -o a file path you can write to"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    print(f"wrote {path}", file=sys.stderr)


def _check_oracle_limits(cascade) -> None:
    """A SpecError at the first tensor or Einsum with more dimensions than the oracle can
    evaluate (an internal numpy error otherwise)."""
    too_large = [(f"tensor {t.name} has {len(t.ranks)} ranks", t.span)
                 for t in cascade.tensors.values() if len(t.ranks) > ORACLE_MAX_DIMS]
    too_large += [(f"the Einsum of {e.tensor} has {len(e.variables)} index variables",
                   e.span) for e in cascade.einsums if len(e.variables) > ORACLE_MAX_DIMS]
    if too_large:
        what, span = too_large[0]
        raise SpecError(f"{what}: the float64 oracle evaluates at most {ORACLE_MAX_DIMS} "
                        f"(numpy's limit on broadcast dimensions)", span,
                        hint=f"eval and check need at most {ORACLE_MAX_DIMS} ranks per tensor "
                             f"and index variables per Einsum; parse, analyze and compile "
                             f"have no such limit", source=cascade.source)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: status 2, no traceback
        self.print_usage(sys.stderr)
        print(f"einsumattn: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def _parse_assignments(text: str, what: str, cast) -> dict:
    """`B=1,H=2` -> {'B': 1, 'H': 2}."""
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise BindError(f"{what}: expected NAME=VALUE, got '{item}'")
        try:
            result[name.strip()] = cast(value.strip())
        except ValueError:
            raise BindError(f"{what}: '{value.strip()}' is not a valid value for "
                            f"{name.strip()}") from None
    return result


def _load(args):
    """The spec's cascade. Its warnings are printed on stderr, rendered like errors with
    `warning:`, once each; with --werror they are printed as errors and the command
    stops (status 2) before it does anything else. main() keeps the library's own
    warnings about the spec quiet: a later load of it (check compiles it) repeats none."""
    from .loader import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SpecWarning)
        cascade = load(Path(args.spec))
    texts: dict[str, SpecWarning] = {}
    for record in caught:
        if isinstance(record.message, SpecWarning):
            texts.setdefault(record.message.render(), record.message)
        else:   # not ours to format: shown as Python shows it
            warnings.warn_explicit(record.message, record.category, record.filename,
                                   record.lineno, source=record.source)
    found = list(texts.values())
    if args.werror and found:
        for warning in found[:-1]:
            print(warning.as_error().render(), file=sys.stderr)
        raise found[-1].as_error()
    for warning in found:
        print(warning.render(), file=sys.stderr)
    return cascade


def _cmd_parse(args) -> int:
    from .ir.summary import summary

    cascade = _load(args)
    print(summary(cascade))
    return EXIT_OK


def _cmd_eval(args) -> int:
    import numpy as np

    from .evaluate import check_memory, evaluate
    from .ir import bind

    cascade = _load(args)
    _check_oracle_limits(cascade)
    sizes = _parse_assignments(args.shapes, "--shapes", int)
    params = _parse_assignments(args.params, "--params", float)
    binding = bind(cascade, sizes=sizes, params=params)
    check_memory(cascade, binding)   # refuse before the random inputs are made
    rng = np.random.default_rng(args.seed)
    inputs = {t.name: rng.standard_normal(binding.extent(cascade, t.name))
              for t in cascade.inputs}
    outputs = evaluate(cascade, inputs, params)
    print(f"{cascade.name}: oracle (float64), seed {args.seed}, sizes "
          + ", ".join(f"{k}={v}" for k, v in binding.sizes.items()))
    for name, value in outputs.items():
        finite = "all finite" if np.isfinite(value).all() else "NOT all finite"
        print(f"  {name:<8} shape {tuple(value.shape)}  sum {value.sum():.10g}  "
              f"sum|x| {np.abs(value).sum():.10g}  {finite}")
    return EXIT_OK


def _rewrite_section(result, fmt: str):
    """Passes before and after the rewrites, the canonical form's steps (each with its
    proof) and refusals, the other steps, and what blocks the rest: read off the
    rewrite's own record."""
    from .analysis.passes import analyse_passes

    before, after = result.passes("before"), result.passes("after")
    remaining = [d.explain() for info in analyse_passes(result.cascade).values()
                 for d in info.dependencies if result.cascade.ranks[info.rank].split_of is None]
    if fmt == "json":
        return {"passes_before": before, "passes_after": after,
                "canonical": [{"rule": s.rule, "tensors": list(s.tensors),
                               "summary": s.summary, "proved": s.identity}
                              for s in result.canonical],
                "canonical_blocked": [{"rule": b.rule, "tensor": b.tensor,
                                       "reason": b.reason}
                                      for b in result.canonical_blocked],
                "steps": [{"rule": s.rule, "summary": s.summary, "proved": s.identity}
                          for s in result.steps],
                "blocked": [{"rule": b.rule, "tensor": b.tensor, "reason": b.reason}
                            for b in result.blocked],
                "remaining_dependencies": remaining}
    lines = ["Rewrites (einsumattn rewrite; compile applies them)",
             "  passes: " + result.change(only_changed=False).removesuffix(" passes")]
    for step in result.canonical:
        lines.append(f"  canonical form, {step.comment()}")
        lines.append(f"    proved: {step.identity}")
    for note in result.canonical_blocked:
        lines.append(f"  canonical form blocked: {note.explain()}")
    lines += [f"  step {n}, {step.comment()}" for n, step in enumerate(result.steps, 1)]
    if not result.steps:
        lines.append("  no rewrite applies")
    for note in result.blocked:
        lines.append(f"  blocked: {note.explain()}")
    if remaining:
        lines.append("  the remaining passes are the lower bound for the derived cascade: "
                     "each is forced by a read-read dependency no rule removes:")
        lines += [f"    {text}" for text in remaining]
    if fmt == "md":
        return "\n## " + lines[0] + "\n\n" + "\n".join(
            ("  - " if line.startswith("    ") else "- ") + line.strip() for line in lines[1:])
    return "\n" + "\n".join(lines)


def _merge_note(cascade, tile: int) -> str:
    """compile --merge's line: what the module's partial states hold, or why none."""
    from .transform.merge import Merge, derive_merge

    merge = derive_merge(cascade, tile=tile)
    if not isinstance(merge, Merge):
        return f"no partial, merge, finish: {merge.reason}"
    return (f"partial, merge, finish over ranges of {merge.rank}; the state is "
            + ", ".join(part.name for part in merge.parts))


def _merge_section(cascade, tile: int, fmt: str):
    """analyze's account of the merge of partial states (transform/merge.py)."""
    from .ir.printer import einsum_text
    from .transform.merge import Merge, derive_merge

    merge = derive_merge(cascade, tile=tile)
    if fmt == "json":
        if not isinstance(merge, Merge):
            return {"refused": merge.reason, "tensor": merge.tensor}
        return {"rank": merge.rank,
                "state": [{"name": p.name, "kind": p.kind, "ranks": list(p.ranks),
                           "shift": p.shift} for p in merge.parts],
                "log_sum_exp": list(merge.lse) if merge.lse else None,
                "merge": [einsum_text(merge.combine, e) for e in merge.combine.einsums],
                "finish": [einsum_text(merge.finish, e) for e in merge.finish.einsums],
                "proved": list(merge.proofs)}
    title = "Merge of partial states (split-KV, context parallelism)"
    lines = [f"  {line}" for line in merge.lines()] if isinstance(merge, Merge) else \
        [f"  refused: {merge.explain()}"]
    if fmt == "md":
        return "\n## " + title + "\n\n" + "\n".join(
            ("  - " if line.startswith("    ") else "- ") + line.strip() for line in lines)
    return "\n" + "\n".join([title, *lines])


def _cmd_analyze(args) -> int:
    import json

    from .analysis import analyze
    from .transform import rewrite

    sizes = _parse_assignments(args.bind, "--bind", int) if args.bind else None
    cascade = _load(args)
    report = analyze(cascade, sizes=sizes, dtype=args.dtype)
    text = report.render(args.format)
    if args.format != "dot":
        section = _rewrite_section(rewrite(cascade, tile=args.tile), args.format)
        merge = _merge_section(cascade, args.tile, args.format)
        if args.format == "json":
            data = json.loads(text)
            data["rewrite"] = section
            data["merge"] = merge
            text = json.dumps(data, indent=2)
        else:
            text = text.rstrip("\n") + "\n" + section + "\n" + merge
    if args.output:
        _write_text(args.output, text if text.endswith("\n") else text + "\n")
    else:
        print(text)
    return EXIT_OK


def _cmd_rewrite(args) -> int:
    from .transform import rewrite

    result = rewrite(_load(args), tile=args.tile)
    text = result.text()
    if args.output:
        _write_text(args.output, text)
    else:
        print(text, end="")
    return EXIT_OK


def _cmd_grad(args) -> int:
    from .transform.backward import fast_backward
    from .transform.grad import GradientUnsupported, gradient

    cascade = _load(args)
    try:
        text = fast_backward(cascade).text() if args.fast else gradient(cascade).text()
    except GradientUnsupported as why:
        print(f"einsumattn: error: {args.spec} has no derived gradient: {why}",
              file=sys.stderr)
        return EXIT_USER
    if args.output:
        _write_text(args.output, text)
    else:
        print(text, end="")
    return EXIT_OK


def _cmd_compile(args) -> int:
    from .codegen import compile_to_file
    from .backends.module import Plan

    cascade = _load(args)
    print(f"compiling {args.spec} (rewrites {'off' if args.no_rewrite else 'on'}) ...",
          file=sys.stderr)
    # Built once: the module is generated from it and the summary below is its own.
    plan = Plan(cascade, rewrite=not args.no_rewrite, tile=args.tile, train=args.train)
    with _writing_to(args.output, "give -o a folder you can write to"):
        path = compile_to_file(cascade, args.output, rewrite=not args.no_rewrite,
                               tile=args.tile, train=args.train, merge=args.merge,
                               plan=plan)
    print(f"wrote {path}")
    if args.merge:
        print(f"  merge: {_merge_note(cascade, args.tile)}")
    for line in plan.summary().splitlines():
        print(f"  {line}")
    return EXIT_OK


def _cmd_check(args) -> int:
    import time

    from .codegen.compile import cache_dir, compile as compile_spec
    from .progress import bar
    from .verify import run_check

    # Triton's interpreter computes masked-off lanes too (0/0 there is never used); its
    # numpy warnings say nothing about the kernels.
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            module="triton.runtime.interpreter")
    cascade = _load(args)
    _check_oracle_limits(cascade)
    if args.backend not in ("torch", "reference") and "TRITON_INTERPRET" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            # Before triton is imported: without a GPU, kernels run in its interpreter.
            os.environ["TRITON_INTERPRET"] = "1"
            print("note: no GPU here, so Triton kernels run in Triton's interpreter (slow; "
                  "small sizes)")
    with _writing_to(cache_dir(), "set EINSUMATTN_CACHE_DIR to a folder you can write to"):
        module = compile_spec(Path(args.spec), rewrite=not args.no_rewrite, tile=args.tile,
                              train=args.train, merge=args.merge)
    if args.merge:
        print(f"merge: {_merge_note(cascade, args.tile)}")
    backends = tuple(module.BACKENDS) if args.backend == "all" else (args.backend,)
    # A backend that does not apply to this spec (the module says why) is not checked.
    unavailable = [module.BACKENDS[b] for b in backends if module.BACKENDS[b] is not None]
    if unavailable:
        print(f"note: no Triton kernels for this spec ({unavailable[0]}); "
              f"checking the torch backend only")
        backends = tuple(b for b in backends if module.BACKENDS[b] is None) or ("torch",)
    print(f"{cascade.name}: checking {', '.join(backends)} against the float64 oracle, "
          f"{args.examples} cases")
    rounded = getattr(module, "DOT_ROUNDING", None)
    if "triton" in backends and rounded:
        print(f"note: with float16/bfloat16 inputs the fused kernels round the computed "
              f"tl.dot operands of {', '.join(sorted(rounded))} to that dtype; their "
              f"tolerance adds the first-order bound of exactly that (docs/codegen.md)")
    verdicts: list[dict] = []
    said: list[str] = []
    started = time.perf_counter()
    # The bar (on a terminal) says which case is being tried; the lines go above it.
    with bar(args.examples, f"{cascade.name}: check") as progress:
        def report(line: str) -> None:
            said.append(line)
            progress.write(line)

        def trying(case) -> None:
            progress.set_description(f"{cascade.name}: {case.describe()}")
            progress.update()

        ok = run_check(cascade, module, backends, args.examples, report=report,
                       record=verdicts.append, trying=trying)
    print("all cases agree" if ok else "MISMATCH: see the smallest failing case above")
    if args.json:
        _write_check_json(args, cascade, backends, ok, verdicts, said,
                          time.perf_counter() - started)
    return EXIT_OK if ok else EXIT_INTERNAL


def _write_check_json(args, cascade, backends, ok: bool, verdicts: list[dict],
                      said: list[str], seconds: float) -> None:
    """check --json: the summary CI reads (README, "Using it")."""
    import json

    counts = {v: sum(1 for r in verdicts if r["verdict"] == v)
              for v in ("ok", "MISMATCH", "ERROR", "skip")}
    smallest = said[said.index("smallest failing case:") + 1].strip() \
        if "smallest failing case:" in said[:-1] else None
    summary = {"einsumattn": __version__, "spec": args.spec, "attention": cascade.name,
               "backends": list(backends), "examples": args.examples,
               "options": {"rewrite": not args.no_rewrite, "tile": args.tile,
                           "train": args.train, "merge": args.merge},
               "ok": ok, "counts": counts, "smallest_failing_case": smallest,
               "seconds": round(seconds, 3), "verdicts": verdicts}
    path = Path(args.json)
    with _writing_to(path, "give --json a file you can write"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


def _cmd_bench(args) -> int:
    import json

    from . import bench
    from .codegen.compile import cache_dir

    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            module="triton.runtime.interpreter")
    cascade = _load(args)
    lengths = [int(n) for n in args.lengths.split(",") if n.strip()]
    if not lengths or min(lengths) < 1:
        raise UsageError(f"--lengths: give sequence lengths of 1 or more, as 128,256, not "
                         f"'{args.lengths}'")
    given = _parse_assignments(args.shape, "--shape", int)
    unknown = sorted(set(given) - set(cascade.ranks))
    if unknown:
        raise UsageError(f"--shape: {unknown[0]} is not a rank of {cascade.name} (its ranks: "
                         f"{', '.join(cascade.ranks)})")
    folder = Path(args.output)
    with _writing_to(cache_dir(), "set EINSUMATTN_CACHE_DIR to a folder you can write to"):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        result = bench.run(args.spec, lengths, given=given, dtype=args.dtype,
                           device=device, repeats=args.repeats, progress=True)
    table = bench.markdown(result)
    print(table, end="")
    with _writing_to(folder, "give -o a folder you can write"):
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / cascade.name
        stem.with_suffix(".md").write_text(table, encoding="utf-8")
        stem.with_suffix(".json").write_text(json.dumps(result.data(), indent=1) + "\n",
                                             encoding="utf-8")
        drawn = bench.plot(result, stem.with_suffix(".png"))
    written = [stem.with_suffix(".md"), stem.with_suffix(".json")] + \
        [stem.with_suffix(".png")] * drawn
    print(f"wrote {', '.join(map(str, written))}" +
          ("" if drawn else " (no plot: pip install 'einsumattn[plot]' for matplotlib)"))
    return EXIT_OK


def _integer_from(least: int):
    """An argparse type: a whole number of at least `least`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"give a whole number of {least} or more, "
                                             f"not '{text}'")
        return value
    return parse


_positive = _integer_from(1)
_non_negative = _integer_from(0)


def _file_in_the_way(folder: Path) -> Path | None:
    """The file, if any, at `folder` or at the nearest of its parents that exists: no
    folder can be made there."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _output_folder(text: str) -> str:
    """compile -o: a folder (made if missing), never an existing file. Checked before the
    compile starts."""
    blocking = _file_in_the_way(Path(text))
    if blocking == Path(text):
        raise argparse.ArgumentTypeError(f"'{text}' is a file; -o takes the folder to write "
                                         f"<name>.py into (e.g. -o build)")
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"'{blocking}' is a file, so no folder '{text}' can "
                                         f"be made in it; give -o a folder path (e.g. -o build)")
    return text


def _output_file(text: str) -> str:
    """analyze/rewrite -o: a file (its folder made if missing), never an existing folder."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"'{text}' is a folder; -o takes the path of the "
                                         f"file to write (e.g. -o {Path(text) / 'out.txt'})")
    blocking = _file_in_the_way(Path(text).parent)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"'{blocking}' is a file, not a folder, so it cannot "
                                         f"hold '{text}'; give -o another file path")
    return text


def _spec_argument(p: argparse.ArgumentParser) -> None:
    """The spec a command reads, and what its warnings do."""
    p.add_argument("spec", help="path of a .attn file")
    p.add_argument("--werror", action="store_true",
                   help="treat warnings about the spec as errors (exit status 2)")


def _tile_option(p: argparse.ArgumentParser) -> None:
    from .defaults import DEFAULT_TILE

    p.add_argument("--tile", type=_positive, default=DEFAULT_TILE, metavar="N",
                   help=f"key tile the online rewrite splits the streamed rank by (default "
                        f"{DEFAULT_TILE}; the fused kernel needs a power of two >= 16)")


def _rewrite_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-rewrite", action="store_true",
                   help="keep the spec's own pass structure in the Triton kernels")
    _tile_option(p)
    p.add_argument("--train", action="store_true",
                   help="add the backward's kernels: backend='triton' trains with them "
                        "(docs/gradients.md, the fast backward)")
    p.add_argument("--merge", action="store_true",
                   help="add partial, merge and finish: the merge of partial states over "
                        "key ranges, for split-KV and context parallelism (docs/merge.md)")


def build_parser() -> argparse.ArgumentParser:
    from .backends.registry import backend_names

    parser = _Parser(prog="einsumattn",
                     description="Compile attention variants written as cascades of Einsums.")
    parser.add_argument("--version", action="version", version=f"einsumattn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    p = commands.add_parser("parse", help="check a spec and print a summary of its cascade")
    _spec_argument(p)
    p.set_defaults(run=_cmd_parse)

    p = commands.add_parser("eval", help="run the float64 oracle on random inputs")
    _spec_argument(p)
    p.add_argument("--shapes", default="", metavar="R=N,...",
                   help="sizes of the ranks the inputs do not fix, e.g. B=1,H=2,P=8,M=8")
    p.add_argument("--params", default="", metavar="NAME=VALUE,...",
                   help="override param defaults")
    p.add_argument("--seed", type=_non_negative, default=0, help="seed of the random inputs")
    p.set_defaults(run=_cmd_eval)

    p = commands.add_parser("analyze", help="passes per rank, buffers and cost: the report")
    _spec_argument(p)
    p.add_argument("--format", choices=("text", "json", "md", "dot"), default="text")
    p.add_argument("--bind", default="", metavar="R=N,...",
                   help="sizes for numbers beside the formulas, e.g. B=1,H=16,P=4096,"
                        "M=4096,E=64,F=64,P0=64 (tile sizes such as P0 too)")
    p.add_argument("--dtype", default="float16",
                   choices=("float16", "bfloat16", "float32", "float64"),
                   help="element type for byte counts (default float16)")
    p.add_argument("-o", "--output", type=_output_file, help="write the report to a file")
    _tile_option(p)
    p.set_defaults(run=_cmd_analyze)

    p = commands.add_parser("rewrite", help="print the derived fewest-pass cascade as .attn "
                                            "source, a comment per rule applied")
    _spec_argument(p)
    p.add_argument("-o", "--output", type=_output_file, help="write it to a file")
    _tile_option(p)
    p.set_defaults(run=_cmd_rewrite)

    p = commands.add_parser("grad", help="print the gradient cascade as .attn source (the "
                                         "backward, derived rule by rule: docs/gradients.md)")
    _spec_argument(p)
    p.add_argument("-o", "--output", type=_output_file, help="write it to a file")
    p.add_argument("--fast", action="store_true",
                   help="the fast backward: the gradient rewritten (shift invariance, delta "
                        "by reassociation, log-sum-exp statistic), what the forward saves "
                        "and what the backward recomputes")
    p.set_defaults(run=_cmd_grad)

    p = commands.add_parser("compile", help="generate the module: Triton kernels and the "
                                            "torch reference")
    _spec_argument(p)
    p.add_argument("-o", "--output", type=_output_folder, default=".",
                   help="folder for <name>.py, made if missing (default: .)")
    _rewrite_options(p)
    p.set_defaults(run=_cmd_compile)

    p = commands.add_parser("check", help="compare the generated backends with the oracle "
                                          "on random cases (hypothesis)")
    _spec_argument(p)
    p.add_argument("--backend", choices=(*backend_names(), "all"),
                   default="all", help="triton: the fused schedule where there is one; "
                                       "torch: its torch form; reference: the spec as "
                                       "straight-line torch")
    p.add_argument("--examples", type=_positive, default=50,
                   help="cases to try (default 50)")
    p.add_argument("--json", type=_output_file, metavar="FILE",
                   help="also write a machine-readable summary (for CI): every verdict, "
                        "the smallest failing case, the time taken")
    _rewrite_options(p)
    p.set_defaults(run=_cmd_check)

    p = commands.add_parser("bench", help="time the compiled module against the peers that "
                                          "compute the same thing (SDPA, FlexAttention, the "
                                          "reference), over sequence lengths")
    _spec_argument(p)
    p.add_argument("--lengths", default="256,512,1024,2048", metavar="N,...",
                   help="the sequence lengths of the sweep (ranks P, M, T, N; default "
                        "256,512,1024,2048)")
    p.add_argument("--shape", default="", metavar="R=N,...",
                   help="sizes of the other ranks (default B=1, H=8, KH=2, E=F=D=64, "
                        "others 16)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                   help="default bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--repeats", type=_positive, default=5,
                   help="timed calls per measurement on the CPU (default 5)")
    p.add_argument("-o", "--output", type=_output_folder, default="bench", metavar="DIR",
                   help="folder for <name>.md, <name>.json and <name>.png (default bench)")
    p.set_defaults(run=_cmd_bench)
    return parser


def collect_less_garbage() -> None:
    """For a process that ends with its command (main() calls it first when it is the
    process's command; benchmarks/compile_time.py --breakdown too). At exit, Python's finalization runs
    full garbage collections over every object still alive (sympy's alone are tens of
    thousands), about 0.1 s of a compile, to free memory the OS takes back anyway:
    gc.freeze() from an atexit handler (atexit runs before the finalization) leaves
    those objects out of them. Other modules' atexit handlers still run and the modules
    are still cleared; Python never promises `__del__` for objects alive at exit.
    Not when Triton was loaded (`check`, `bench`): its extension (nanobind) counts, as
    the interpreter tears it down, the objects of its own still alive, and prints a
    report of hundreds of "leaked" lines for those the freeze kept; those commands run
    for seconds, so the final collection costs them nothing that matters.
    While the command runs, most of what it allocates lives until the end (modules,
    the cascades and their memo tables), and the collector's youngest generation,
    collected every 700 allocations by default, passed over it about 200 times in a
    compile: every 10000 allocations it is collected 15 times (10-20 ms less; the
    garbage waiting for a collection stays that small)."""
    import atexit
    import gc

    atexit.register(_skip_final_collection)
    gc.set_threshold(10000, *gc.get_threshold()[1:])


def _skip_final_collection() -> None:
    import gc

    if not any(name.startswith("triton") for name in sys.modules):
        gc.freeze()


def main(argv: list[str] | None = None) -> int:
    """The `einsumattn` command. Without `argv` it is the process's command (the console
    script, `python -m einsumattn`), read from sys.argv; with it, a call from Python,
    which leaves the process alone."""
    if argv is None:
        collect_less_garbage()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # The command prints the spec's warnings itself (_load).
            warnings.filterwarnings("ignore", category=SpecWarning)
            return args.run(args)
    except SpecError as error:
        print(error.render(), file=sys.stderr)
        return EXIT_USER
    except (BindError, UsageError) as error:
        print(f"einsumattn: error: {error}", file=sys.stderr)
        return EXIT_USER
    except BrokenPipeError:
        # The reader went away (`einsumattn analyze x.attn | head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("einsumattn: interrupted", file=sys.stderr)
        return 130
    except (RecursionError, MemoryError) as error:
        print(f"einsumattn: error: the spec is too large or too deeply nested to process "
              f"({type(error).__name__})", file=sys.stderr)
        return EXIT_USER
    except Exception as error:  # noqa: BLE001 - the last line of defence: no tracebacks
        if os.environ.get("EINSUMATTN_DEBUG"):
            traceback.print_exc()
        print(f"einsumattn: internal error: {type(error).__name__}: {error}\n"
              f"This is a bug in einsumattn; please report it with the spec. "
              f"Set EINSUMATTN_DEBUG=1 for the traceback.", file=sys.stderr)
        return EXIT_INTERNAL
