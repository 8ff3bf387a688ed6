#!/usr/bin/env bash
# Packaging checks, run by `make test`:
#  - a build under pip's default isolation stops at once, naming --no-build-isolation;
#  - the wheel builds from the checkout (sharing make's objects in build/temp: no recompile),
#    tagged cp310-abi3, and its dependencies resolve from the index in a fresh venv: pip picks
#    the torch release the wheel pins (a dry run, --report);
#  - the wheel installs into that fresh venv and passes smoke.py there, with the resolved
#    torch release made importable from the build environment (the same release: checked)
#    instead of a second 2 GB torch install;
#  - the sdist carries csrc/ and builds (CPU kernels only, unoptimised: FUSEDRNN_DEBUG=1, to
#    keep this short; the optimised build is the wheel's).
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
for f in $(git ls-files csrc fusedrnn); do
  grep -q "/$f\$" "$OUT/sdist.txt" || { echo "sdist lacks $f"; exit 1; }
done
# the sdist's build (the longest step) runs while the wheel is resolved, installed and tried
FUSEDRNN_CUDA=0 FUSEDRNN_DEBUG=1 "$PY" -m pip wheel --quiet --disable-pip-version-check --no-build-isolation \
  --no-deps -w "$OUT/from-sdist" "$OUT"/dist/fusedrnn-*.tar.gz > "$OUT/from-sdist.log" 2>&1 &
SDIST_BUILD=$!
trap 'kill "$SDIST_BUILD" 2> /dev/null || true' EXIT  # a check below that fails stops it too
WHEEL=$(ls "$OUT"/dist/fusedrnn-*.whl)
case "$WHEEL" in *-cp310-abi3-*) ;; *) echo "wheel tag is not cp310-abi3: $WHEEL"; exit 1 ;; esac
python3 -m venv "$OUT/venv"
VPY="$OUT/venv/bin/python"
"$VPY" -m pip install --quiet --disable-pip-version-check --dry-run --report "$OUT/resolve.json" "$WHEEL"
"$VPY" - "$OUT/resolve.json" "$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" <<'EOF'
import json, sys
picked = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
assert picked.get("fusedrnn") and picked.get("torch"), picked
assert picked["torch"] == sys.argv[2], f"the wheel resolves torch {picked['torch']}, it was built with {sys.argv[2]}"
print(f"resolved: torch {picked['torch']}, numpy {picked.get('numpy', '(present)')}")
EOF
"$VPY" -m pip install --quiet --disable-pip-version-check --no-deps "$WHEEL"
# then the build environment's site-packages (its torch and numpy) after the venv's own
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
  > "$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/build-env.pth"
(cd "$OUT" && venv/bin/python "$OLDPWD/tests/packaging/smoke.py")
wait "$SDIST_BUILD" || { tail -30 "$OUT/from-sdist.log"; echo "the sdist does not build"; exit 1; }
ls "$OUT"/from-sdist/fusedrnn-*.whl > /dev/null
echo "wheel smoke test: ok ($(basename "$WHEEL"))"
