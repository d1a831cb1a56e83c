#!/usr/bin/env bash
# Development build of the C++ CPU extension into the source tree (pyinterp/_C*.so), so
# that a checkout on PYTHONPATH (or an editable .pth) imports it. Serialised with flock
# because several people may rebuild at once. CI and users build through `pip install .`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
exec 9>/tmp/pyinterp-build.lock
flock 9
build="$root/build/dev"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v "$py")" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" "$@" >/dev/null
cmake --build "$build" -j 2
# Copy then rename: overwriting a loaded .so in place crashes processes that have it mapped.
for so in "$build"/_C*.so; do
  cp "$so" "$root/pyinterp/.$(basename "$so").tmp"
  mv -f "$root/pyinterp/.$(basename "$so").tmp" "$root/pyinterp/$(basename "$so")"
done
echo "built $(ls "$root"/pyinterp/_C*.so)"
