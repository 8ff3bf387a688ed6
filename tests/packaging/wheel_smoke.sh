#!/usr/bin/env bash
# Packaging checks, run by `make test`:
#  - a build under pip's default isolation stops at once, naming --no-build-isolation;
#  - the wheel builds from the checkout (reusing make's build directory), tagged cp310-abi3,
#    installs into a fresh venv (pip fetches the pinned torch release) and passes smoke.py;
#  - the sdist carries csrc/ and builds (CPU kernels only, to keep this short).
#
#   bash tests/packaging/wheel_smoke.sh [PYTHON]      (PYTHON: the build interpreter, with torch)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-.venv/bin/python}
OUT=${FUSEDRNN_WHEEL_DIR:-build/wheel-smoke}
rm -rf "$OUT" && mkdir -p "$OUT/dist"
if "$PY" -m pip wheel --disable-pip-version-check --no-deps -w "$OUT/isolated" . > "$OUT/isolated.log" 2>&1; then
  echo "an isolated build did not stop"; exit 1
fi
grep -q -- "--no-build-isolation" "$OUT/isolated.log" || { tail -20 "$OUT/isolated.log"; echo "no --no-build-isolation hint"; exit 1; }
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-build-isolation --no-deps -w "$OUT/dist" .
"$PY" setup.py -q sdist -d "$OUT/dist" > "$OUT/sdist.log" 2>&1
tar -tzf "$OUT"/dist/fusedrnn-*.tar.gz > "$OUT/sdist.txt"
grep -q "csrc/cpu/layer.cpp" "$OUT/sdist.txt" || { echo "sdist lacks csrc/"; exit 1; }
FUSEDRNN_CUDA=0 "$PY" -m pip wheel --quiet --disable-pip-version-check --no-build-isolation --no-deps \
  -w "$OUT/from-sdist" "$OUT"/dist/fusedrnn-*.tar.gz
WHEEL=$(ls "$OUT"/dist/fusedrnn-*.whl)
case "$WHEEL" in *-cp310-abi3-*) ;; *) echo "wheel tag is not cp310-abi3: $WHEEL"; exit 1 ;; esac
python3 -m venv "$OUT/venv"
"$OUT/venv/bin/pip" install --quiet --disable-pip-version-check "$WHEEL"
(cd "$OUT" && venv/bin/python "$OLDPWD/tests/packaging/smoke.py")
echo "wheel smoke test: ok ($(basename "$WHEEL"))"
