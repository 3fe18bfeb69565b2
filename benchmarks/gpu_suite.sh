#!/usr/bin/env bash
# Everything that needs the GPU, in one call: the GPU tests (kernels, compile/CUDA-graph), the
# polar-step benchmark, the peer benchmark, the language-model run and the full-size paper runs.
# Results land in $OUT (default ./gpu_results): at most 8 files.
#
#   bash benchmarks/gpu_suite.sh            # from the repository root, on a CUDA machine
#   PARTS="tests compile" bash benchmarks/gpu_suite.sh  # a subset of: tests compile polar peers lm paper
# A device call is limited to 10 minutes, so the parts are run as three calls there:
# "tests compile", "polar peers", "lm paper".
set -uo pipefail
OUT=${OUT:-$PWD/gpu_results}
mkdir -p "$OUT"
PARTS=${PARTS:-"tests compile polar peers lm paper"}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 FPOLAR_RESULTS_DIR="$OUT/compile"
# peers that the machine lacks travel as wheels in .whl/ (see benchmarks/README section in BENCHMARKS.md)
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
log="$OUT/suite.log"
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0])"
  date -u
} 2>&1 | tee "$log"
status=0
for part in $PARTS; do
  echo "=== $part ===" | tee -a "$log"
  start=$(date +%s)
  case $part in
    tests) timeout 280 python3 -m pytest -q -p no:cacheprovider -rs tests 2>&1 | tail -30 | tee -a "$log" ;;
    compile)
      timeout 300 python3 -m pytest -q -p no:cacheprovider -rs compile_tests 2>&1 | tail -30 | tee -a "$log"
      # one file back instead of one per test
      python3 -c "import json,glob,sys; d={f.split('/')[-1]: json.load(open(f)) for f in sorted(glob.glob(sys.argv[1]+'/*.json'))}; json.dump(d, open(sys.argv[2],'w'), indent=1)" "$OUT/compile" "$OUT/compile_results.json" && rm -rf "$OUT/compile" ;;
    polar) timeout 300 python3 benchmarks/polar_step.py --json "$OUT/polar_step.json" 2>&1 | tee -a "$log" ;;
    peers) timeout 420 python3 benchmarks/peers.py --json "$OUT/peers.json" 2>&1 | tee -a "$log" ;;
    lm)    timeout 420 python3 benchmarks/lm.py --json "$OUT/lm.json" --plot "$OUT/lm.png" 2>&1 | tee -a "$log" ;;
    train) timeout 450 python3 benchmarks/train.py --budget-s 400 --json "$OUT/train.json" --md "$OUT/train.md" 2>&1 | tee -a "$log" ;;
    paper) timeout 420 python3 -m fpolar paper --device cuda --out "$OUT/paper.json" --plot "$OUT/paper.png" 2>&1 | tee -a "$log" ;;
    *) echo "unknown part $part" | tee -a "$log" ;;
  esac
  rc=${PIPESTATUS[0]}
  echo "=== $part: exit $rc, $(( $(date +%s) - start )) s ===" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
done
exit $status
