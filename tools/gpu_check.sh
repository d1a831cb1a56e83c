#!/usr/bin/env bash
# The one prepared GPU check of pyinterp (issue 15): a lent device machine runs it with a single
# call,
#
#     OUT=$OUT bash tools/gpu_check.sh
#
# from the source tree (PYTHONPATH=<repo>), with that machine's own python3, torch, triton and
# cupy: it installs nothing and builds nothing. The C++ cpu backend is not built (cmake/pybind11
# may be missing there, and every GPU test compares with the pure-torch reference backend), so
# tests of the cpu backend skip with that reason.
#
# Steps, each with its own timeout; a step that would start with too little of the overall
# budget (GPU_CHECK_SECONDS, default 460 s: inside 8 minutes) left is skipped, so the script
# ends in time even if a kernel hangs:
#   env        versions, nvidia-smi, `pyinterp info`
#   probes     tests/test_gpu_defects.py + tests/test_cuda_topk_race.py: one probe per fixed
#              defect of issue 15 and the CUDA top-k stress run
#   sanitizer  compute-sanitizer racecheck + synccheck on the CUDA top-k epilogue
#   tests      the GPU tests of the op families, in parallel (pytest-xdist) with per-test
#              timeouts (pytest-timeout) when those plugins are there
#   bench-*    benchmarks/compare.py <family> --device cuda --json, for every family
# Without a CUDA device every GPU step is skipped with its reason (a CPU dry run).
#
# Files under $OUT (flat, at most 8): summary.txt (one line per step, then the benchmark
# table), check.log (every step's output), junit-probes.xml, junit-tests.xml, bench.json,
# sanitizer.log.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_SECONDS:-460}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYINTERP_BACKEND=auto
unset TRITON_INTERPRET
SUMMARY="$OUT/summary.txt"
LOG="$OUT/check.log"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
START=$(date +%s)
: >"$SUMMARY"
: >"$LOG"

left() { echo $((BUDGET - ($(date +%s) - START))); }

record() {  # record STEP STATUS SECONDS DETAIL
  printf '%-16s %-8s %5ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"
}

# step NAME TIMEOUT COMMAND: run COMMAND (a bash string) with at most TIMEOUT seconds, capped
# by what is left of the budget.
step() {
  local name=$1 limit=$2 cmd=$3 t0 rc status secs remaining
  remaining=$(left)
  if ((remaining < 15)); then
    record "$name" SKIP 0 "no time left in the ${BUDGET}s budget"
    return 0
  fi
  ((limit > remaining)) && limit=$remaining
  printf '\n===== %s (timeout %ss) =====\n+ %s\n' "$name" "$limit" "$cmd" >>"$LOG"
  t0=$(date +%s)
  timeout -k 10 "$limit" bash -c "$cmd" >>"$LOG" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  case $rc in
    0) status=PASS ;;
    124 | 137) status=TIMEOUT ;;
    *) status=FAIL ;;
  esac
  record "$name" "$status" "$secs" "exit $rc; log in check.log"
  return 0
}

skip() { record "$1" SKIP 0 "$2"; }

# ---------------------------------------------------------------------------- environment
{
  echo "pyinterp GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "triton", "cupy", "numpy", "pytest", "xdist", "pytest_timeout"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', 'present')}")
    except Exception as exc:
        print(f"{name}: not importable ({type(exc).__name__})")
try:
    import torch
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"device: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
              f"{p.total_memory / 2**30:.0f} GiB, torch CUDA {torch.version.cuda}")
    else:
        print("device: none (torch.cuda.is_available() is False)")
except Exception as exc:
    print("torch:", exc)
EOF
} 2>&1 | tee -a "$SUMMARY"
echo | tee -a "$SUMMARY"
step env 30 "nvidia-smi || true; $PY -m pyinterp info"

HAVE_GPU=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
NO_GPU="no CUDA device: torch.cuda.is_available() is False (CPU dry run)"

# pytest flags: parallel workers and per-test timeouts when the plugins are installed
PYTEST="$PY -m pytest -p no:cacheprovider -q -rfEs"
if "$PY" -c "import xdist" 2>/dev/null; then XDIST="-n 8"; else XDIST=""; fi
if "$PY" -c "import pytest_timeout" 2>/dev/null; then PT="--timeout"; else PT=""; fi
per_test() { [ -n "$PT" ] && echo "$PT $1"; }

# ------------------------------------------------------------------------------ GPU steps
# The probes also run without a GPU: the GPU probes then skip with their reason and the
# host-thread check of the CUDA top-k epilogue runs.
step probes 100 "$PYTEST $(per_test 90) tests/test_gpu_defects.py tests/test_cuda_topk_race.py --junitxml=$OUT/junit-probes.xml"
if [ "$HAVE_GPU" = 1 ]; then
  if command -v compute-sanitizer >/dev/null; then
    cat >"$TMP/topk_small.py" <<'EOF'
import torch
from pyinterp import ops
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(4, 32, device="cuda", generator=g)
W = torch.randn(32, 5000, device="cuda", generator=g)
b = torch.zeros(5000, device="cuda")
for k in (100, 256):
    v, i = ops.topk_encode(x, W, b, None, k, backend="cuda")
torch.cuda.synchronize()
print("topk ran", tuple(v.shape))
EOF
    for tool in racecheck synccheck; do
      step "sanitizer-$tool" 40 "set -o pipefail; compute-sanitizer --tool $tool --kernel-name kns=sae_topk_chunk --error-exitcode 1 $PY $TMP/topk_small.py 2>&1 | tee -a $OUT/sanitizer.log | tail -20"
    done
  else
    skip sanitizer "compute-sanitizer is not on PATH"
  fi

  step tests 110 "$PYTEST $XDIST $(per_test 60) -m 'not slow' tests/test_solu.py tests/test_sae_ops.py tests/test_attention_ops.py tests/test_persona_ops.py tests/test_properties.py tests/test_dispatch.py --junitxml=$OUT/junit-tests.xml"

  # benchmarks: the families the issue sets targets for first, full size; the rest --quick
  # (solu and sae also compile their torch.compile baselines, a few seconds per graph cold)
  for fam_limit in solu:90 sae:120 attention:60 persona:60; do
    fam=${fam_limit%%:*}
    step "bench-$fam" "${fam_limit##*:}" "$PY benchmarks/compare.py $fam --device cuda --json $TMP/bench-$fam.json"
  done
  for fam in sae_train models; do
    step "bench-$fam" 30 "$PY benchmarks/compare.py $fam --device cuda --quick --json $TMP/bench-$fam.json"
  done
else
  for s in sanitizer tests bench; do skip "$s" "$NO_GPU"; done
fi

# one JSON of every benchmark row, and the table in the summary
"$PY" - "$TMP" "$OUT/bench.json" <<'EOF' >>"$SUMMARY" 2>&1
import json, sys
from pathlib import Path
rows = []
for f in sorted(Path(sys.argv[1]).glob("bench-*.json")):
    fam = f.stem[len("bench-"):]
    rows += [dict(r, family=fam) for r in json.loads(f.read_text())]
if rows:
    Path(sys.argv[2]).write_text(json.dumps(rows, indent=1))
    print("\nbenchmarks (median ms | x baseline | x roofline time):")
    for r in rows:
        sp = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        rf = "-" if r.get("vs_roofline") is None else f"{r['vs_roofline']:.2f}"
        print(f"  {r['op']:<24} {r['dtype']:<9} {r['impl'][:38]:<38} {r['seconds'] * 1e3:9.3f} {sp:>7} {rf:>6}")
EOF
echo "total $(($(date +%s) - START)) s of ${BUDGET} s" | tee -a "$SUMMARY"
grep -Eq '^\S+ +(FAIL|TIMEOUT) ' "$SUMMARY" && exit 1
exit 0
