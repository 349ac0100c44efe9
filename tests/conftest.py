import contextlib
import os
import pathlib

# Where the generated Triton kernels run. Without a GPU: in Triton's interpreter (set
# before triton is imported). With one (and TRITON_INTERPRET unset): compiled for it and
# run there, since the interpreter accepts code the GPU compiler rejects; GPU is then True
# and _run_triton_on_the_gpu() below moves the tests' CPU inputs there and back.
GPU = False
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if torch.cuda.is_available():
        GPU = True
    else:
        os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Hypothesis profiles (README, "Development").
# - "ci", the default (`.ci/run`, a plain pytest run): derandomized, so every run draws
#   the same cases and a submission passes or fails by its code, never by chance; no
#   example database (nothing an earlier run found on this machine is replayed), and
#   no timing checks (a loaded machine must not fail a test).
# - "thorough" (`--hypothesis-profile=thorough`, before every merge): fresh random cases,
#   every property test's quick count times THOROUGH_SCALE (EINSUMATTN_THOROUGH_SCALE,
#   default 80: 2,000 random cascades per backend in tests/test_codegen.py). A failure
#   it finds becomes an explicit @example of the test.
QUICK_EXAMPLES = 100          # hypothesis's default count; a test's own count scales alike
THOROUGH_SCALE = int(os.environ.get("EINSUMATTN_THOROUGH_SCALE", "80"))
_UNTIMED = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=QUICK_EXAMPLES, derandomize=True,
                          database=None, print_blob=True, **_UNTIMED)
settings.register_profile("thorough", max_examples=QUICK_EXAMPLES * THOROUGH_SCALE,
                          derandomize=False, print_blob=True, **_UNTIMED)
settings.load_profile("ci")   # hypothesis's --hypothesis-profile option loads after this


def examples(quick: int) -> int:
    """max_examples for a property test that tries `quick` cases under the ci profile:
    the same count there, THOROUGH_SCALE times it under the thorough profile. Called
    where the test is defined, after pytest has loaded the profile."""
    return max(1, quick * settings.default.max_examples // QUICK_EXAMPLES)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _on_the_gpu(forward):
    """A generated module's Triton entry point that takes the tests' CPU tensors (the
    oracle's device): they run on the GPU, and the outputs come back to the inputs'
    device. Only the tests are adapted: the module itself refuses CPU tensors."""
    import torch

    def back(value, device):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, (tuple, list)):
            return type(value)(back(v, device) for v in value)
        if isinstance(value, dict):
            return {k: back(v, device) for k, v in value.items()}
        return value

    def run(*args, **kwargs):
        home = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        moved = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        result = forward(*moved, **kwargs)
        return result if home is None else back(result, home)
    return run


def _run_triton_on_the_gpu():
    """Every generated module the tests import (einsumattn.compile and the tests' own
    import_file) runs its Triton kernels on the GPU."""
    import importlib
    compile_module = importlib.import_module("einsumattn.codegen.compile")
    imported = compile_module.import_file

    def import_file(path, module_name, text=None):
        module = imported(path, module_name, text)
        if hasattr(module, "_triton_forward"):
            module._triton_forward = _on_the_gpu(module._triton_forward)
        return module
    compile_module.import_file = import_file


if GPU:
    _run_triton_on_the_gpu()


def kernels_env(**extra) -> dict:
    """The environment of a child process that runs Triton kernels where this run does:
    in the interpreter without a GPU, compiled for the GPU with one."""
    env = {**os.environ, **extra}
    if GPU:
        env.pop("TRITON_INTERPRET", None)
    else:
        env["TRITON_INTERPRET"] = "1"
    return env


# benchmarks/attention.py's options for Triton kernels run where this run runs them.
BENCHMARK_DEVICE = ["--device", "cuda"] if GPU else ["--device", "cpu", "--interpret"]


_GENERATED_FILES: list = []


def load_generated(code: str, name: str):
    """Import generated module text the way Triton needs it: from a file of its own (the
    GPU compiler reads each kernel's source from its file; the interpreter does not), and
    through import_file like every other test, so that GPU runs move inputs too."""
    import importlib
    import itertools
    import tempfile

    if not _GENERATED_FILES:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="einsumattn-tests-"))
        _GENERATED_FILES.extend([folder, itertools.count()])
    folder, counter = _GENERATED_FILES
    path = folder / f"{name}_{next(counter)}.py"
    path.write_text(code, encoding="utf-8", errors="surrogatepass")
    compile_module = importlib.import_module("einsumattn.codegen.compile")
    return compile_module.import_file(path, f"einsumattn_tests.{path.stem}", code)
EXAMPLES = sorted((ROOT / "examples").glob("*.attn"))


def compiled_specs(folder: pathlib.Path, specs: dict, prefix: str, **options) -> dict:
    """name -> (cascade, generated module) for spec texts by name, each written to
    `folder` and compiled there with `options` (compile_to_file's)."""
    import einsumattn
    from einsumattn.codegen import compile_to_file
    from einsumattn.codegen.compile import import_file

    found = {}
    for name, text in specs.items():
        spec = folder / f"{name}.attn"
        spec.write_text(text)
        cascade = einsumattn.load(spec)
        found[name] = cascade, import_file(compile_to_file(spec, folder / "out", **options),
                                           f"{prefix}_{name}")
    return found


@contextlib.contextmanager
def tuned(module, **overrides):
    """Every fused kernel of a generated module with these knobs pinned, for the block."""
    saved = {name: dict(table) for name, table in module.TUNING_FUSED.items()}
    try:
        for table in module.TUNING_FUSED.values():
            table.update(overrides)
        yield
    finally:
        module.TUNING_FUSED.update(saved)


class Forced:
    """A kernel launched with some of its compile-time flags forced."""

    def __init__(self, kernel, **flags):
        self.kernel, self.flags = kernel, flags

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.kernel[grid](*args, **{**kwargs, **self.flags})


class Recorded(Forced):
    """A kernel whose launches record their keyword arguments."""

    def __init__(self, kernel, **flags):
        super().__init__(kernel, **flags)
        self.launched = []

    def __getitem__(self, grid):
        launch = super().__getitem__(grid)

        def recorded(*args, **kwargs):
            self.launched.append(kwargs)
            return launch(*args, **kwargs)
        return recorded


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    return ROOT


# The sliding-window example without its sink keys: a window on both sides of the diagonal.
WINDOW = (ROOT / "examples" / "sliding_window_sinks.attn").read_text().replace(
    "where m <= p and (p - m < W or m < S)", "where m <= p and p - m < W").replace(
    "attention sliding_window_sinks", "attention sliding_window")
