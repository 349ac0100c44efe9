"""Whole-process compile time: `einsumattn compile` per spec, and `import einsumattn`.

    python benchmarks/compile_time.py                     # examples/ and benchmarks/specs/
    python benchmarks/compile_time.py --runs 5 --json out.json --text out.txt
    python benchmarks/compile_time.py --only causal_softmax gpsa

Every run is a fresh Python process (`python -m einsumattn compile SPEC -o DIR`) with a
fresh, empty EINSUMATTN_CACHE_DIR, so the module cache never hides work: what is timed
is what a user waits for the first time they compile a spec. Each spec runs `--runs`
times and its median counts. The import row is the median of `python -c "import
einsumattn"` less the median of `python -c pass` (the interpreter's own start).

`--breakdown SPEC` splits one compile into its parts instead, median over `--runs`
fresh processes: Python's start (`python -c pass`), then inside one process, as the
command runs, the import of `einsumattn.cli`, the collector set as the command sets it
(cli.collect_less_garbage), the import of sympy (and `sympy.tensor.tensor`, which
sympy's first sum imports), lark and jinja2, of each layer of einsumattn in the order
the layers depend on each other, and the
compile's work (`einsumattn.cli.main(["compile", ...])`); the time spent creating
dataclasses is shown beside it (it is part of the imports above). The last part is
the whole command's median (timed as the table times it) less the parts before it.

The package's bytecode is compiled first (`python -m compileall einsumattn`), as pip
does when it installs a package: otherwise, with PYTHONDONTWRITEBYTECODE set (as it is
on the development machine), every run would compile the compiler's own sources again
(about 0.13 s), which no installed copy does.

Wall-clock time is what the targets are stated in; the CPU time (user + system) of the
child process is printed beside it because it moves much less when other work shares
the cores. The load average before and after the runs is recorded with the results:
read numbers taken on a busy machine with that in mind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))
PAPER_SPECS = sorted((ROOT / "benchmarks" / "specs").glob("*.attn"))

# The targets of issue 11 (seconds, wall clock, on the 2-core development machine).
TARGETS = {"examples_median": 0.5, "examples_worst": 2.0, "paper_spec_worst": 5.0,
           "import": 0.3}

# Modules `import einsumattn` must not load: a command pays for them only when it needs them.
HEAVY_MODULES = ("sympy", "networkx", "torch", "lark", "jinja2", "numpy", "triton")


def _environment() -> dict[str, str]:
    """The current environment, with this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("EINSUMATTN_CACHE_DIR", None)
    return env


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run; a failed run is an error."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def compile_bytecode(env: dict[str, str]) -> None:
    """Write the package's .pyc files (read even where PYTHONDONTWRITEBYTECODE stops
    Python from writing them), as an install has them."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "einsumattn")],
                   env=env, cwd=ROOT, check=True, capture_output=True)


@contextlib.contextmanager
def _scratch(env: dict[str, str]):
    """A fresh folder for one run, removed after it, and `env` with an empty module
    cache inside it."""
    scratch = Path(tempfile.mkdtemp(prefix="einsumattn-bench-"))
    try:
        yield scratch, {**env, "EINSUMATTN_CACHE_DIR": str(scratch / "cache")}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def compile_times(spec: Path, runs: int, env: dict[str, str]) -> dict:
    """Median and spread of `einsumattn compile SPEC`, each run with an empty cache."""
    walls, cpus = [], []
    for _ in range(runs):
        with _scratch(env) as (scratch, run_env):
            wall, cpu = timed([sys.executable, "-m", "einsumattn", "compile", str(spec),
                               "-o", str(scratch / "out")], run_env)
        walls.append(wall)
        cpus.append(cpu)
    return {"spec": str(spec.relative_to(ROOT)), "wall_s": statistics.median(walls),
            "cpu_s": statistics.median(cpus), "wall_runs_s": walls}


def import_time(runs: int, env: dict[str, str]) -> dict:
    """`import einsumattn` less the interpreter's start, medians of `runs` each; and the
    heavy modules the import loaded."""
    bare = [timed([sys.executable, "-c", "pass"], env) for _ in range(runs)]
    full = [timed([sys.executable, "-c", "import einsumattn"], env) for _ in range(runs)]
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, einsumattn; print(' '.join(sorted("
         f"m for m in {HEAVY_MODULES!r} if m in sys.modules)))"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    help_runs = [timed([sys.executable, "-m", "einsumattn", "--help"], env)
                 for _ in range(runs)]
    median = statistics.median
    return {"wall_s": median(w for w, _ in full) - median(w for w, _ in bare),
            "cpu_s": median(c for _, c in full) - median(c for _, c in bare),
            "python_start_wall_s": median(w for w, _ in bare),
            "help_wall_s": median(w for w, _ in help_runs) - median(w for w, _ in bare),
            "heavy_modules_loaded": probe.stdout.split()}


# What `--breakdown` imports, one phase each, in this order: sympy (and the module its
# first sum imports), the other third-party modules of a compile, then einsumattn's
# layers (tests/test_layering.py), each after those it imports.
BREAKDOWN_IMPORTS = ("sympy", "sympy.tensor.tensor", "lark", "jinja2", "einsumattn.frontend",
                     "einsumattn.ir", "einsumattn.analysis", "einsumattn.transform",
                     "einsumattn.schedule.*", "einsumattn.backends.module",
                     "einsumattn.codegen")

# Run as `python -c` with the spec, the output folder and the imports as arguments;
# prints the phases as JSON.
_BREAKDOWN_PROBE = r"""
import contextlib, dataclasses, importlib, io, json, pkgutil, sys, time
spec, out, imports = sys.argv[1], sys.argv[2], sys.argv[3:]
made = {"s": 0.0, "count": 0}
process_class = dataclasses._process_class

def timed_process_class(*args, **kwargs):
    start = time.perf_counter()
    try:
        return process_class(*args, **kwargs)
    finally:
        made["s"] += time.perf_counter() - start
        made["count"] += 1

dataclasses._process_class = timed_process_class
phases = {}
# As `python -m einsumattn`: the command line first, then the collector set as the
# command sets it, then what the compile imports.
start = time.perf_counter()
from einsumattn import cli
phases["import einsumattn.cli (argparse, diagnostics)"] = time.perf_counter() - start
cli.collect_less_garbage()
for name in imports:
    start = time.perf_counter()
    if name.endswith(".*"):
        package = importlib.import_module(name[:-2])
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
    else:
        importlib.import_module(name)
    phases[f"import {name}"] = time.perf_counter() - start
before = set(sys.modules)
start = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    status = cli.main(["compile", spec, "-o", out])
phases["work: cli.main(compile)"] = time.perf_counter() - start
assert status == 0, status
print(json.dumps({"phases": phases, "dataclasses_s": made["s"],
                  "dataclasses": made["count"],
                  "loaded_by_work": sorted(set(sys.modules) - before)}))
"""


def breakdown(spec: Path, runs: int, env: dict[str, str]) -> dict:
    """The parts of one compile of `spec` (see the module docstring): medians over
    `runs` fresh processes, in seconds."""
    samples, extra = [], {}
    start_times = [timed([sys.executable, "-c", "pass"], env)[0] for _ in range(runs)]
    for _ in range(runs):
        with _scratch(env) as (scratch, run_env):
            done = subprocess.run(
                [sys.executable, "-c", _BREAKDOWN_PROBE, str(spec), str(scratch / "out"),
                 *BREAKDOWN_IMPORTS], env=run_env, cwd=ROOT, capture_output=True,
                text=True, check=True)
        extra = json.loads(done.stdout)
        samples.append(extra)
    phases = {"python start (python -c pass)": statistics.median(start_times)}
    for name in samples[0]["phases"]:
        phases[name] = statistics.median(s["phases"][name] for s in samples)
    # The whole command, timed as the table times it: what the parts above leave out
    # (python -m, the exit) is the difference.
    whole = compile_times(spec, runs, env)["wall_s"]
    phases["the rest of `python -m einsumattn compile` (-m, exit)"] = \
        whole - sum(phases.values())
    return {"spec": str(spec.relative_to(ROOT)), "runs": runs, "phases_s": phases,
            "total_s": whole,
            "dataclasses_s": statistics.median(s["dataclasses_s"] for s in samples),
            "dataclasses": extra["dataclasses"],
            "loaded_by_work": extra["loaded_by_work"]}


def render_breakdown(data: dict) -> str:
    rows = data["breakdown"]
    lines = [f"einsumattn compile, its parts: {rows['spec']}, median of {rows['runs']} "
             f"fresh process(es) per part",
             f"machine: {data['machine']['cpu']}, commit {data['machine']['commit']}, "
             f"{data['machine']['date']}, load average (1 min) before "
             f"{data['load_before']:.2f}, after {data['load_after']:.2f}", ""]
    total = rows["total_s"]
    for name, seconds in rows["phases_s"].items():
        lines.append(f"{name:<52} {seconds * 1000:8.1f} ms {100 * seconds / total:5.1f} %")
    lines += [f"{'the whole command (median)':<52} {total * 1000:8.1f} ms",
              f"of the imports above, creating {rows['dataclasses']} dataclasses: "
              f"{rows['dataclasses_s'] * 1000:.1f} ms",
              "modules the work imported: " + (", ".join(rows["loaded_by_work"]) or "none")]
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    gpu = "an NVIDIA GPU (nvidia-smi found)" if shutil.which("nvidia-smi") else "no GPU"
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": gpu,
            "platform": platform.platform(), "python": platform.python_version(),
            "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def summary(examples: list[dict], papers: list[dict], imported: dict,
            column: str) -> dict:
    """The values the targets are stated for, from the `column` of each row."""
    times = [row[column] for row in examples]
    result = {"import": imported[column]}
    if times:
        result["examples_median"] = statistics.median(times)
        result["examples_worst"] = max(times)
    if papers:
        result["paper_spec_worst"] = max(row[column] for row in papers)
    return result


def render(data: dict) -> str:
    info = data["machine"]
    lines = [f"einsumattn compile time, {data['runs']} run(s) per row (median), fresh "
             f"process and empty EINSUMATTN_CACHE_DIR each run",
             f"machine: {info['cpu']}, {info['cores']} cores, {info.get('gpu', '')}, "
             f"{info['platform']}, "
             f"Python {info['python']}, commit {info['commit']}, {info['date']}",
             f"load average (1 min) before {data['load_before']:.2f}, after "
             f"{data['load_after']:.2f}",
             f"command: {data['command']}",
             "bytecode: compiled before the runs (python -m compileall einsumattn), "
             "as an install has it", "",
             f"{'spec':<44} {'wall s':>8} {'cpu s':>8}"]
    for group in ("examples", "paper_specs"):
        for row in data[group]:
            lines.append(f"{row['spec']:<44} {row['wall_s']:8.2f} {row['cpu_s']:8.2f}")
    imported = data["import"]
    lines += [f"{'import einsumattn (less python -c pass)':<44} {imported['wall_s']:8.3f} "
              f"{imported['cpu_s']:8.3f}",
              f"{'einsumattn --help (less python -c pass)':<44} "
              f"{imported['help_wall_s']:8.3f}",
              f"python -c pass: {imported['python_start_wall_s']:.3f} s; heavy modules "
              f"loaded by import einsumattn: "
              f"{', '.join(imported['heavy_modules_loaded']) or 'none'}", ""]
    lines.append(f"{'':<18} {'wall s':>8} {'cpu s':>8}   target (wall clock)")
    for key, target in TARGETS.items():
        if key in data["summary"]:
            wall, cpu = data["summary"][key], data["summary_cpu"][key]
            verdict = "meets" if wall <= target else "MISSES"
            lines.append(f"{key:<18} {wall:8.3f} {cpu:8.3f}   <= {target} s: {verdict}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per row (median)")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME",
                        help="only the specs with these stems")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--text", type=Path, help="write the table here too")
    parser.add_argument("--breakdown", type=Path, metavar="SPEC",
                        help="instead: the parts of one compile of SPEC (imports by "
                             "module, work), medians of --runs processes")
    args = parser.parse_args(argv)

    env = _environment()
    compile_bytecode(env)
    if args.breakdown is not None:
        return _main_breakdown(args, argv, env)
    chosen = lambda specs: [s for s in specs if args.only is None or s.stem in args.only]
    load_before, started = os.getloadavg()[0], machine()    # the date the runs start
    examples = [compile_times(s, args.runs, env) for s in chosen(EXAMPLES)]
    papers = [compile_times(s, args.runs, env) for s in chosen(PAPER_SPECS)]
    imported = import_time(max(args.runs, 5), env)
    data = {"runs": args.runs, "machine": started, "load_before": load_before,
            "load_after": os.getloadavg()[0], "examples": examples, "paper_specs": papers,
            "import": imported, "targets": TARGETS,
            "summary": summary(examples, papers, imported, "wall_s"),
            "summary_cpu": summary(examples, papers, imported, "cpu_s")}
    return _report(data, render, args, argv)


def _main_breakdown(args, argv: list[str] | None, env: dict[str, str]) -> int:
    load_before, started = os.getloadavg()[0], machine()
    rows = breakdown(args.breakdown.resolve(), args.runs, env)
    data = {"machine": started, "load_before": load_before,
            "load_after": os.getloadavg()[0], "breakdown": rows}
    return _report(data, render_breakdown, args, argv)


def _report(data: dict, rendering, args, argv: list[str] | None) -> int:
    """Print the results (and write them where --text and --json say), with the
    command that took them."""
    data = {"command": " ".join([Path(sys.executable).name, "benchmarks/compile_time.py",
                                 *(argv if argv is not None else sys.argv[1:])]), **data}
    text = rendering(data)
    print(text, end="")
    if args.text:
        args.text.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
