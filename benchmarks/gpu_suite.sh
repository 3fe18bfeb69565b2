#!/usr/bin/env bash
# Everything that needs the GPU, in one call: the GPU tests (kernels, compile/CUDA-graph), the
# polar-step benchmark, the peer benchmark, the language-model run and the full-size paper runs.
# Results land in $OUT (default ./gpu_results): at most 8 files.
#
#   bash benchmarks/gpu_suite.sh            # from the repository root, on a CUDA machine
#   PARTS="tests compile" bash benchmarks/gpu_suite.sh  # a subset of: tests compile polar peers lm paper lmtext kernels memory
# (also "glue": the step's glue, torch vs fused vs memory time, benchmarks/glue.py, under a minute;
# "nuclear": PolarGrad's ⟨O, X⟩, torch eager vs compiled vs fpolar::batched_inner vs memory time, benchmarks/nuclear.py)
# "lmtext" (the tuned PolarGrad / Muon / AdamW comparison on the stdlib text) fills one call on its own:
# PARTS=lmtext; a second call on the still-warm machine continues its unfinished runs (on a fresh one,
# LMTEXT_RESUME=path/to/the/first/lm_text.json, carried, keeps the runs that finished).
# A device call is limited to 10 minutes, so the parts are run as separate calls there: "tests"
# (tests/gpu first, about 1.5 min, then the CPU tests: past 4 min on the H200 now, so give it a call of its own) and "compile" (over 5 min since the GPT compile tests) each alone or side
# by side in one call (two OUT folders), "polar peers", "train", "lmtext", "lm paper". "skip" (not in the
# default list, about a minute): what nonfinite="skip" costs an eager step on the GPU, "skip" vs "propagate".
# "cuda" (not in the default list): only the tests that need CUDA, tests/gpu and the compile_tests files
# with CUDA-only tests, in one call: what to run after a change that CPU tests cannot see.
# "trainprof" (not in the default list, one call): the whole-step compile recipe and its floor, with the
# drop-in beside them, each with 3 profiled steps (wall vs device-busy ms, the top kernels): where the
# whole-step graph's time goes.
# "lanes" (not in the default list, about a minute): the drop-in's captured step with its groups in
# order or side by side (benchmarks/side_streams.py). "addresses" (not in the default list, about two
# minutes): GPT-2-small's loop with the drop-in, model eager then compiled, which grads moved at which
# step and the drop-in graph's captures (benchmarks/grad_addresses.py).
# "tma" (about 2.5 minutes): X Xᵀ from lower tiles through TMA, pointer loads and cuBLAS, with a config
# sweep (benchmarks/tma_gram_probe.py); "tmapoly" the same sweep for sym_poly at m = 768 and 1024, "tmacross" for sym_cross (about a minute). "split" (about 1.5 minutes): GPT-2-small's train step split into
# forward+backward, step and zero_grad per drop-in recipe (benchmarks/step_split.py). "launch" (under a
# minute): host µs per launch of each product, and the Python profile of an eager step
# (benchmarks/launch_overhead.py). None of the three is in the default list.
# "dist" (benchmarks/distributed_gpu.py: the distributed checks on NCCL, the captured distributed step,
# optimizer scaling beside dion, a GPT-2-medium train step) uses every visible GPU, one rank each; on a
# one-GPU machine it gives the world-1 baseline rows. It is not in the default PARTS: PARTS=dist.
#
# Each part's "exit N" is the status of its own test runner or benchmark (not of a pipe or a later
# bookkeeping command); the script exits non-zero if any part, or any part's bookkeeping, failed.
# To add a part: one line in run_part (and, if it leaves files to merge, one in after_part).
# Kernel tuning is off by default (fixed configs and auto rules); tests/gpu/test_kernel_tuning_gpu.py
# turns it on itself; FPOLAR_TUNE=1 in the environment runs every part tuned; "kernels" (benchmarks/kernel_tuning.py, about a minute) measures the tuning.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_results}
mkdir -p "$OUT"
ALL_PARTS="tests compile polar peers lm paper lmtext kernels memory"
PARTS=${PARTS:-$ALL_PARTS}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 FPOLAR_RESULTS_DIR="$OUT/compile"
# NVLink multicast off in NCCL, PyTorch's symmetric memory and NVSHMEM (it can take shared GPUs out of service)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# Packages the machine lacks travel as wheels in .whl/ (see the benchmarks section of BENCHMARKS.md):
# the peers, and optional test packages such as expecttest (`pip download expecttest -d .whl --no-deps`).
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
log="$OUT/suite.log"
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0])"
  # Tests that need a missing optional package skip with the reason (pytest -rs shows it); say so up front.
  python3 -c "
import importlib.util
missing = [m for m in ('expecttest', 'numpy', 'transformers', 'lightning') if importlib.util.find_spec(m) is None]
print('optional test packages missing (their tests skip):', ', '.join(missing) if missing else 'none')"
  date -u
} 2>&1 | tee "$log"

# One part: its test runner or benchmark, nothing after it, so its status is the part's status.
run_part() {
  case $1 in
    tests)   timeout 540 python3 -m pytest -q -p no:cacheprovider -rfEs tests/gpu tests ;;  # the GPU tests first
    compile) timeout 540 python3 -m pytest -q -p no:cacheprovider -rfEs compile_tests ;;
    cuda)    timeout 540 python3 -m pytest -q -p no:cacheprovider -rfEs --durations=15 tests/gpu $(grep -l "needs a CUDA GPU" compile_tests/test_*.py) ;;
    polar)   timeout 300 python3 benchmarks/polar_step.py --json "$OUT/polar_step.json" ;;
    glue)    timeout 120 python3 benchmarks/glue.py --json "$OUT/glue.json" ;;
    nuclear) timeout 120 python3 benchmarks/nuclear.py --json "$OUT/nuclear.json" ;;
    kernels) timeout 120 python3 benchmarks/kernel_tuning.py --json "$OUT/kernel_tuning.json" ;;
    peers)   timeout 420 python3 benchmarks/peers.py --json "$OUT/peers.json" ;;
    lm)      timeout 420 python3 benchmarks/lm.py --json "$OUT/lm.json" --plot "$OUT/lm.png" ;;
    train)   timeout 450 python3 benchmarks/train.py --budget-s 400 --json "$OUT/train.json" --md "$OUT/train.md" ;;
    trainprof) timeout 560 python3 benchmarks/train.py --models gpt2-small --modes eager --budget-s 520 --recipe-timeout-s 240 \
               --only 'compile_train_step,fpolar.optim.muon(param' --profile 3 --json "$OUT/train_profile.json" --md "$OUT/train_profile.md" ;;
    lmtext)  timeout 570 python3 benchmarks/lm_text.py --out "$OUT" --run-dir .lm_text_runs --budget-s 480 ${LMTEXT_RESUME:+--resume-json "$LMTEXT_RESUME"} ;;
    skip)    timeout 240 python3 benchmarks/skip_overhead.py --device cuda --scale 8 ;;
    dist)    timeout 540 python3 benchmarks/distributed_gpu.py --out "$OUT/dist" ;;
    memory)  timeout 120 python3 benchmarks/step_memory.py --json "$OUT/step_memory.json" ;;
    tma)     timeout 300 python3 benchmarks/tma_gram_probe.py --json "$OUT/tma_probe.json" ;;
    tmapoly) timeout 300 python3 benchmarks/tma_gram_probe.py --poly --json "$OUT/tma_poly.json" ;;
    tmacross) timeout 200 python3 benchmarks/tma_gram_probe.py --cross --json "$OUT/tma_cross.json" ;;
    split)   timeout 190 python3 benchmarks/step_split.py --json "$OUT/step_split.json" ;;
    launch)  timeout 180 python3 benchmarks/launch_overhead.py --profile-step ;;
    lanes)   timeout 150 python3 benchmarks/side_streams.py --json "$OUT/side_streams.json" ;;
    addresses) timeout 60 python3 benchmarks/grad_addresses.py --steps 12 && timeout 120 python3 benchmarks/grad_addresses.py --steps 12 --compile-model ;;
    paper)   timeout 420 python3 -m fpolar paper --device cuda --out "$OUT/paper.json" --plot "$OUT/paper.png" ;;
    *)       echo "unknown part $1; parts: $ALL_PARTS"; return 2 ;;
  esac
}

# What of a part's output goes to the log: pytest's summary is at its end.
shown() {
  case $1 in
    tests|compile|cuda) tee "$OUT/pytest_$1.log" | tail -80 ;;  # whole output kept: tracebacks of failures
    *)             cat ;;
  esac
}

# Bookkeeping after a part (its own status, reported separately from the part's).
after_part() {
  case $1 in
    compile)  # one file back instead of one per test
      python3 -c "import json,glob,sys; d={f.split('/')[-1]: json.load(open(f)) for f in sorted(glob.glob(sys.argv[1]+'/*.json'))}; json.dump(d, open(sys.argv[2],'w'), indent=1)" "$OUT/compile" "$OUT/compile_results.json" \
        && rm -rf "$OUT/compile" ;;
  esac
}

status=0
for part in $PARTS; do
  echo "=== $part ===" | tee -a "$log"
  start=$(date +%s)
  run_part "$part" 2>&1 | shown "$part" | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "=== $part: exit $rc, $(( $(date +%s) - start )) s ===" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
  after_part "$part" 2>&1 | tee -a "$log"
  post=${PIPESTATUS[0]}
  if [ "$post" -ne 0 ]; then
    echo "=== $part: collecting its results failed (exit $post) ===" | tee -a "$log"
    status=1
  fi
done
exit $status
