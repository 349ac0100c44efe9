#!/usr/bin/env bash
# One GPU session's checks, as one command: the machine, the benchmarks on a quiet GPU,
# then the whole test suite with real Triton compilation (tests/conftest.py: with a GPU
# and TRITON_INTERPRET unset, every generated kernel is compiled for the GPU and run
# there). Results go to $OUT (default ./gpu-out); commit them under benchmarks/results/
# with the device named.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh            # everything (about 9 minutes)
#   BENCH_SECONDS=0 bash benchmarks/gpu_run.sh         # the suite only
#
# Offline machines: wheels of missing packages (lark) in .whl/ are installed first.
# The Triton tutorial peer (benchmarks/attention.py) reads .peers/ref_attn.py where the
# shared sm90 tool is not beside the checkout: before the run,
#   mkdir -p .peers && cp ../shared/tools/sm90/ref_attn.py .peers/
# and carry .peers (ignored by git) with the working tree.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 EINSUMATTN_CACHE_DIR=/tmp/einsumattn-cache
BENCH_SECONDS=${BENCH_SECONDS:-170}
SUITE_SECONDS=${SUITE_SECONDS:-300}

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || export PYTHONPATH=$PWD
{
    date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton',
triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
    git log -1 --format='commit %H %s' 2>/dev/null; nproc
} > "$OUT/env.txt" 2>&1

# 1. Benchmarks first, while the GPU has nothing else to do. Issue 12's target shape
#    (bf16, head dim 128, N=16k) and the static table's (fp16, head dim 64, N=4096, B=4),
#    with the tile variants the heuristic will choose between.
if [ "$BENCH_SECONDS" -gt 0 ]; then
    timeout -s INT "$BENCH_SECONDS" python3 benchmarks/attention.py \
        --specs causal_softmax softmax_1pass sigmoid_attention \
        --seq 16384 --batch 1 --heads 16 --head-dim 128 --dtype bfloat16 \
        --tune p__BLOCK=128,num_warps=8 p__BLOCK=128,tile=128,num_warps=8 \
               p__BLOCK=64,num_warps=4 \
        --progress --json "$OUT/bench_d128_bf16.json" > "$OUT/bench.md" 2>&1
    timeout -s INT $((BENCH_SECONDS / 2)) python3 benchmarks/attention.py \
        --specs causal_softmax softmax_1pass sigmoid_attention \
        --seq 4096 --batch 4 --heads 16 --head-dim 64 --dtype float16 \
        --tune p__BLOCK=128,num_warps=4 p__BLOCK=128,num_warps=8 \
        --progress --json "$OUT/bench_d64_fp16.json" >> "$OUT/bench.md" 2>&1
    # Training (issue 13): forward + backward through the backward's kernels, against
    # SDPA's and FlexAttention's autograd, at the target shape.
    timeout -s INT $((BENCH_SECONDS / 2)) python3 benchmarks/attention.py --train \
        --specs causal_softmax softmax_3pass sigmoid_attention \
        --seq 16384 --batch 1 --heads 16 --head-dim 128 --dtype bfloat16 \
        --progress --json "$OUT/bench_train_d128_bf16.json" >> "$OUT/bench.md" 2>&1
    # Decoding (issue 16, split-KV): one query against KV caches of 4k-64k keys, the
    # host's split against one split and SDPA.
    timeout -s INT $((BENCH_SECONDS / 3)) python3 benchmarks/decoding.py \
        --json "$OUT/bench_decoding.json" > "$OUT/decoding.md" 2>&1
    # einsumattn bench (issue 17): the CLI's sweep against SDPA and FlexAttention, table,
    # JSON and plot (the plot where matplotlib is installed) per spec.
    for run in "causal_softmax B=1,H=16,E=128,F=128" "gqa B=1,H=16,KH=4,E=128,F=128" \
               "softcap B=1,H=16,E=128,F=128"; do
        set -- $run
        timeout -s INT $((BENCH_SECONDS / 4)) python3 -m einsumattn bench \
            "examples/$1.attn" --lengths 1024,4096,16384 --shape "$2" \
            -o "$OUT/bench-cli" >> "$OUT/bench-cli.md" 2>&1
    done
fi

# 2. The whole suite, compiled for the GPU. test_readme installs from a package registry,
#    which the GPU machine cannot reach; CI runs it.
workers=$(( $(nproc) > 12 ? 12 : $(nproc) ))
timeout -s INT "$SUITE_SECONDS" python3 -m pytest -q -n "$workers" -p no:cacheprovider --timeout 280 \
    --deselect tests/test_readme.py -rfEs --durations=15 \
    --junitxml="$OUT/junit.xml" > "$OUT/pytest.txt" 2>&1
echo "pytest exit $?" >> "$OUT/pytest.txt"
tail -5 "$OUT/pytest.txt"
echo "--- bench"; grep -v "^|---" "$OUT/bench.md" | grep "einsumattn triton \|einsumattn triton$\|SDPA\|Flex" | cut -c1-150 | head -40
