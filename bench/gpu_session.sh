#!/usr/bin/env bash
# The device run of the GPU check: one command on a bare GPU machine (see docs/performance.md,
# "How to run the GPU check").
#
#   make gpu-wheels                       # here, once: PyAV and tomli-w wheels into .whl/
#   OUT=gpu-out bash bench/gpu_session.sh [gpu_check.py options]
#
# It installs the wheels in .whl/ (what the machine's image lacks) and copies vidfeat into a
# folder of its own, records the machine (nvidia-smi, cores, memory, /dev/shm), then runs
# bench/gpu_check.py.
# The log, the JSON rows and the markdown table are written into $OUT as the check goes, so a
# run stopped from outside still leaves what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
SITE=${VIDFEAT_SITE:-/tmp/vidfeat-site}
mkdir -p "$OUT" "$SITE"
pip_install() { "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"; }
if compgen -G ".whl/*.whl" >/dev/null; then
  pip_install .whl/*.whl || { echo "gpu_session: installing the wheels in .whl/ failed" >&2; exit 1; }
fi
# vidfeat laid out as pyproject.toml's package-dir installs it (no build backend needed)
rm -rf "$SITE/vidfeat" && cp -r vidfeat "$SITE/" && cp -r models "$SITE/vidfeat/model_cards" \
  && cp -r train "$SITE/vidfeat/recipes" || { echo "gpu_session: copying vidfeat into $SITE failed" >&2; exit 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the machine: GPU, cores, memory, and /dev/shm (decode workers hand clips over through it)
{ nvidia-smi || echo "no nvidia-smi"; nproc; free -g; df -h /dev/shm /tmp; } >"$OUT/machine.txt" 2>&1
"$PY" -P -c "import av, h5py, tomli_w, torch, vidfeat.model.cards as c; print('vidfeat', c.__file__, 'torch', torch.__version__, 'PyAV', av.__version__)" \
  || { echo "gpu_session: a package is missing: run 'make gpu-wheels' here and carry .whl" >&2; exit 1; }
"$PY" bench/gpu_check.py --json "$OUT/gpu_check.json" --markdown "$OUT/gpu_check.md" "$@" 2>&1 | tee "$OUT/gpu_check.log"
