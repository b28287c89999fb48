#!/usr/bin/env bash
# One prepared GPU benchmark run, within BUDGET_S seconds (default 480): what the kernel chooser
# picks (install_checks), kernels against ceilings, the isolated full-size block step (eager
# torch, our kernels, CUDA graph, FP8 experts), the whole pipeline end to end at the published
# shapes (bench/gpu_e2e.py: the static captured loop, text-to-image with decode, understanding,
# editing, chat, FP8), then the image tokenizer and the decoder (eager vs compiled) with what is
# left. Uses the image's own torch and triton. Each section runs in its own process under
# `timeout`, capped by the time left; a failing or timed-out section is reported and the script
# goes on. Wheels in bench/wheels/ (diffusers for the VAE; carry them to the device) are
# installed into a scratch folder first, without dependencies, when the image lacks them.
#
#   bash bench/gpu.sh              # on the device machine; JSON goes to $OUT (or bench/out/)
#   bash bench/gpu.sh --dry-run    # CPU: tiny shapes through the Triton interpreter
set -u
cd "$(dirname "$0")/.."
# The image's interpreter on the device; this checkout's venv on a CPU machine.
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif ! command -v nvidia-smi >/dev/null 2>&1 && [ -x .venv/bin/python ]; then PY=.venv/bin/python
elif command -v python >/dev/null 2>&1; then PY=python
else PY=python3; fi
OUT_DIR=${OUT:-bench/out}
mkdir -p "$OUT_DIR"
BUDGET_S=${BUDGET_S:-480}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
START=$(date +%s)
STATUS=()

run_section() {  # name, max seconds, command...
  local name=$1 max=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  local lim=$(( max < left ? max : left ))
  if [ "$lim" -lt 10 ]; then
    echo "=== $name: skipped (budget spent)"; STATUS+=("\"$name\": \"skipped: budget\""); return
  fi
  echo "=== $name (limit ${lim}s): $*"
  local t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$lim" "$@" > >(tee "$OUT_DIR/$name.log") 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  echo "=== $name: rc=$rc in ${dt}s"
  STATUS+=("\"$name\": {\"rc\": $rc, \"seconds\": $dt}")
}

if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1
  run_section install_checks 60 $PY bench/gpu_checks.py --dry-run
  run_section kernels 200 $PY bench/gpu_kernels.py --section all --dry-run --out "$OUT_DIR"
  run_section image_tokenizer 30 $PY bench/gpu_image_tokenizer.py --dry-run
  run_section e2e 400 $PY bench/gpu_e2e.py --dry-run --out "$OUT_DIR"
  run_section decoder 60 $PY bench/gpu_decoder.py --config tiny --device cpu --dtype float32 --grid 4 --steps 1 --repeats 1 --no-vae
else
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT_DIR/nvidia_smi.log"
  if ls bench/wheels/*.whl >/dev/null 2>&1 && ! $PY -c "import diffusers" >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-deps --no-index --target /tmp/lladauni_wheels bench/wheels/*.whl \
      && export PYTHONPATH="/tmp/lladauni_wheels${PYTHONPATH:+:$PYTHONPATH}"
  fi
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" 2>&1
  run_section install_checks 45 $PY bench/gpu_checks.py
  run_section kernels 60 $PY bench/gpu_kernels.py --section kernels --out "$OUT_DIR"
  run_section backbone 100 $PY bench/gpu_kernels.py --section backbone --out "$OUT_DIR"
  LEFT=$(( BUDGET_S - ($(date +%s) - START) ))
  E2E_LIM=$(( LEFT < 230 ? LEFT : 230 ))  # rows start only while 45 s of it remain
  run_section e2e 230 $PY bench/gpu_e2e.py --budget-s $(( E2E_LIM > 60 ? E2E_LIM - 45 : 15 )) --out "$OUT_DIR"
  run_section image_tokenizer 30 $PY bench/gpu_image_tokenizer.py --repeats 3
  run_section decoder 90 $PY bench/gpu_decoder.py --mode both --repeats 1
fi

# One summary JSON: every section's rc and time, the kernels' JSON files, and the last JSON
# object printed by the image-tokenizer and decoder scripts.
SECTIONS=$(IFS=,; echo "${STATUS[*]}")
$PY - "$OUT_DIR" "{${SECTIONS}}" "$(( $(date +%s) - START ))" <<'PYEOF'
import json, sys
from pathlib import Path
out, sections, total = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
summary = {"sections": sections, "total_seconds": total}
for f in sorted([*out.glob("kernels_*.json"), out / "e2e.json"]):
    if not f.exists():
        continue
    try:
        summary[f.stem] = json.loads(f.read_text())
    except Exception as exc:
        summary[f.stem] = {"error": str(exc)}
for name in ("install_checks", "image_tokenizer", "decoder"):
    log = out / f"{name}.log"
    if not log.exists():
        continue
    text = log.read_text(errors="replace")
    found = None
    for start in [i for i, c in enumerate(text) if c == "{"][::-1]:
        try:
            found = json.loads(text[start:]); break
        except Exception:
            continue
    summary[name] = found if found is not None else {"error": "no JSON in output", "tail": text[-1500:]}
path = out / "gpu_summary.json"
path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
print(json.dumps(summary["sections"], indent=2))
print(f"wrote {path} ({total}s)")
PYEOF
