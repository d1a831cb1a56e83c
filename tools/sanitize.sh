#!/usr/bin/env bash
# Build the C++ extension with AddressSanitizer + UBSan (CMake option PYINTERP_SANITIZE=ON)
# into build/sanitize (the normal pyinterp/_C*.so is not touched) and run the CPU-backend
# tests of every op family against it. Python itself is not instrumented, so libasan is
# LD_PRELOADed and leak detection is off; any ASan/UBSan report fails the run.
#
#   tools/sanitize.sh                 # build + run the cpu tests of the op families
#   tools/sanitize.sh -k solu         # extra pytest arguments
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
build="$root/build/sanitize"
exec 9>/tmp/pyinterp-build-sanitize.lock
flock 9
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPYINTERP_SANITIZE=ON \
  -DPYINTERP_NATIVE=OFF -DPython_EXECUTABLE="$(command -v "$py")" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$build" -j "${JOBS:-2}" >/dev/null
so=$(ls "$build"/_C*.so)
exec 9>&-
log="$build/sanitizer-report"
rm -f "$log".*
asan=$(${CXX:-g++} -print-file-name=libasan.so)
ubsan=$(${CXX:-g++} -print-file-name=libubsan.so)
tests=()
# + the fuzz of every op's index and shape checks (random shapes, strides, out-of-range
# indices: tests/test_op_fuzz.py, more cases here) and the NaN/Inf paths of the kernels.
for f in test_solu.py test_sae_ops.py test_attention_ops.py test_persona_ops.py \
         test_op_fuzz.py test_nan_semantics.py test_public_index_checks.py \
         test_multi_decode.py test_jumprelu.py; do
  [ -f "$root/tests/$f" ] && tests+=("tests/$f")
done
cd "$root"
set +e
LD_PRELOAD="$asan $ubsan" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:log_path=$log:verify_asan_link_order=0" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$log" \
PYINTERP_FUZZ_CASES="${PYINTERP_FUZZ_CASES:-400}" PYINTERP_C_PATH="$so" PYTHONPATH="$root/tools${PYTHONPATH:+:$PYTHONPATH}" \
  "$py" -m pytest -q --capture=sys -p sanitize_preload -k "cpu" "${tests[@]}" "$@" 2>&1 | tee "$build/pytest.log"
rc=${PIPESTATUS[0]}

set -e
# reports go to stderr (pytest runs with --capture=sys so the C runtime's fd 2 is not
# swallowed) and, where the runtime honours log_path, to $log.<pid>
if ls "$log".* >/dev/null 2>&1 || grep -q "runtime error:\|ERROR: AddressSanitizer" "$build/pytest.log"; then
  echo "sanitizer reports found:" >&2
  cat "$log".* 2>/dev/null >&2
  grep -A12 "runtime error:\|ERROR: AddressSanitizer" "$build/pytest.log" >&2
  exit 1
fi
echo "sanitizer run: pytest exit $rc, no ASan/UBSan report ($so)"
exit $rc
