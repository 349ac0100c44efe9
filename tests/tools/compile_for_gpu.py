"""Compile every Triton kernel of generated modules for a GPU, ahead of time, on a
machine without one: Triton's front end, LLVM and the bundled ptxas all run on the CPU.

    TRITON_INTERPRET= python tests/tools/compile_for_gpu.py MODULE.py ... [--arch 90]
                                                [--fused-only MODULE.py ...]

--fused-only: the modules after it compile their fused kernels only, in bf16 with TMA
loads (the modules before it cover fp32, fp16 and the pointer loads).

The interpreter (what the other tests run kernels in) accepts code the GPU compiler
rejects; this is the check that the generated kernels are real GPU kernels. It
compiles, it does not run: correctness on a GPU still needs a GPU.

Signatures: input pointers as fp32, fp16 and bf16 (the unfused kernels fp32 and bf16) (loaded as float32; tl.dot operands
in the inputs' dtype, DOT_DTYPE, as the module's _dot_dtype chooses), intermediates
fp32, masks int8, strides int64, sizes int32, params fp32, block sizes as in the
module's TUNING tables (16 for the feature tiles). A kernel with fp16/bf16 dots must
use the tensor cores (mma in its PTX). Prints a line per kernel and dtype and exits 1 if
any fails."""
import importlib.util, re, sys, time
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

DTYPES = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}

def spelled(name):
    """A spec name as generated code spells it (einsumattn/backends/names.py)."""
    return name + ("0_" if name.startswith("__") else "_")

# The compile-time flags the host computes per call (schedule/scales.py,
# schedule/interior.py): a positive scale, 32-bit tile offsets, TMA loads.
FLAGS = re.compile(r"^(\w+__POSITIVE|OFFSETS_32|INDEX_32|TMA)$")


def knob(name, tuning):
    """A block size: the module's pinned value, else the GPU rule's 64 for a tile of keys
    or rows (a None in TUNING_FUSED: chosen per call), else 16."""
    value = tuning.get(name)
    return value if isinstance(value, int) else (64 if name in tuning else 16)


def _top_level_items(text):
    """How many comma-separated items `text` holds outside parentheses."""
    depth, items = 0, 1
    for char in text:
        depth += (char == "(") - (char == ")")
        items += char == "," and depth == 0
    return items


def signature(module, kernel, dtype, tma=True):
    params = {spelled(p) for p in module.PARAMS}
    inputs = {spelled(i) for i in module.INPUTS}
    sig, constexprs, desc = {}, {}, {}
    tuning = {}
    for t in list(getattr(module, "TUNING", {}).values()) + \
            list(getattr(module, "TUNING_FUSED", {}).values()):
        tuning.update(t)
    for name in kernel.arg_names:
        if name.endswith("_BLOCK") or name in ("BLOCK", "RBLOCK"):
            sig[name] = "constexpr"
            constexprs[name] = knob(name, tuning)
        elif name == "DOT_DTYPE":
            sig[name] = "constexpr"
            constexprs[name] = DTYPES[dtype]
        elif FLAGS.match(name):
            sig[name] = "constexpr"
            constexprs[name] = tma if name == "TMA" else True
        elif name.endswith("__desc"):
            # A TMA descriptor: its block is the tile the kernel reshapes its loads to
            # ([1, 1, keys, features] for K and V), the block sizes as above.
            # The descriptor has as many dimensions as the load has coordinates (4 for
            # K[b, h, m, e], 2 for a weight W1[r, c]).
            coords, rows, cols = re.search(
                rf"{name}\.load\(\[(.*?)\]\)\.reshape\((\w+), (\w+)\)", kernel.src).groups()
            desc[name] = (_top_level_items(coords), rows, cols)
            sig[name] = None
        elif name.endswith("__ok_ptr"):
            sig[name] = "*i8"
        elif name.endswith("_state_ptr"):        # split-KV's float32 state buffers
            sig[name] = "*fp32"
        elif name.endswith("__ptr"):
            tensor = name[:-4]
            sig[name] = f"*{dtype}" if tensor in inputs else "*fp32"
        elif re.search(r"__(state_)?s[0-9]+$", name):
            sig[name] = "i64"
        elif name in params:
            sig[name] = "fp32"
        else:                      # sizes, and the window offsets the host computes
            sig[name] = "i32"
    for name, (dims, rows, cols) in desc.items():
        block = ["1"] * (dims - 2) + [str(constexprs[rows]), str(constexprs[cols])]
        sig[name] = f"tensordesc<{dtype}[{', '.join(block)}]>"
    return sig, constexprs

arguments = sys.argv[1:]
arch = 90
if "--arch" in arguments:
    at = arguments.index("--arch")
    arch = int(arguments[at + 1])
    del arguments[at:at + 2]
# Modules after --fused-only: their fused kernels only, in bf16 (the unfused
# schedule's one kernel per Einsum comes from one generator, and fp16 takes bf16's code
# path with another element type: the modules before it cover both).
fused_only = set()
if "--fused-only" in arguments:
    at = arguments.index("--fused-only")
    fused_only = set(arguments[at + 1:])
    del arguments[at]
failures = 0
for path in arguments:
    spec = importlib.util.spec_from_file_location("m", path)
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    # A covering module's split-KV kernels too (schedule/split_kv.py: the partial
    # kernel is the fused one with its steps split and its state stored; the merge
    # kernel folds the states), in bf16 with TMA loads: their other branches are the
    # fused kernel's.
    kinds = ("_fused",) if path in fused_only else ("__kernel", "_fused", "__partial",
                                                   "__merge")
    kernels = [getattr(module, n) for n in dir(module) if n.endswith(kinds)]
    for kernel in kernels:
        forms = [True, False] if "TMA" in kernel.arg_names else [True]
        # A covering module's fused kernels in every dtype, TMA and pointer loads; its
        # unfused kernels (one per Einsum, from one generator) in fp32 and bf16: fp16
        # takes bf16's code path with another element type. A module after --fused-only
        # takes bf16 and its TMA form only: fp32 (the dots' other operand type,
        # DOT_DTYPE) and the pointer loads (TMA=False) are the same lowering's other
        # branches, which the covering modules compile, and bf16 is the stricter for the
        # tensor cores (k of 16 per MMA against tf32's 8). CI's time: all of it for every
        # module was a third of the suite's, and the fused-only modules' fp32 compiles a
        # third of what was left.
        if path in fused_only:
            dtypes, forms = ("bf16",), [True]
        elif kernel.__name__.endswith(("__partial", "__merge")):
            dtypes, forms = ("bf16",), [True]
        elif kernel.__name__.endswith("_fused"):
            dtypes = DTYPES
        else:
            dtypes = ("fp32", "bf16")
        for dtype, tma in ((d, t) for d in dtypes for t in forms):
            sig, constexprs = signature(module, kernel, dtype, tma)
            start = time.time()
            try:
                compiled = triton.compile(triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                                          target=GPUTarget("cuda", arch, 32))
                status = "ok"
                # Half-precision dots must run on the tensor cores (mma / wgmma in the PTX).
                if "DOT_DTYPE" in kernel.arg_names and dtype != "fp32" and \
                        "mma" not in compiled.asm["ptx"]:
                    failures += 1
                    status = "FAIL a half-precision tl.dot without tensor-core instructions"
            except Exception as e:
                failures += 1
                status = "FAIL " + str(e).splitlines()[0][:200] if str(e) else "FAIL " + type(e).__name__
            form = "" if len(forms) == 1 else (" tma" if tma else " ptr")
            print(f"{path.rsplit('/',1)[-1]:28} {kernel.__name__:28} {dtype}{form} {time.time()-start:5.1f}s {status}", flush=True)
print("failures", failures)
sys.exit(1 if failures else 0)
