#!/usr/bin/env bash
# Issue #13's GPU checks as one prepared command for a device session (one H100/H200; about 9 minutes):
# the whole user path at SDXL size (benchmarks/sdxl_scale.py), then the latency model's error on random SDXL
# plans (benchmarks/latency_model.py). Each has its own time limit, so a slow or failing first part still
# leaves the second its time; every table and the end of every stage's log land in $OUT.
#
#   here, once:   bash benchmarks/device_wheels.sh          (wheels the GPU machine lacks, into .whl/)
#   device tool:  run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
#
# SDXL_SCALE and LATENCY override the two commands' arguments (e.g. the full 64-trial run on its own).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-session}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import importlib, pkgutil, torch, diffusers, optuna, transformers, pruner
for m in pkgutil.walk_packages(pruner.__path__, 'pruner.'): m.name.endswith('__main__') or importlib.import_module(m.name)  # a missing package shows here
print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'optuna', optuna.__version__)
print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
} 2>&1 | tee "$out/env.txt"
work=/tmp/sdxl-scale
rm -rf "$work"
start=$(date +%s)
timeout 380 python3 benchmarks/sdxl_scale.py --work "$work" \
  ${SDXL_SCALE:---trials 4 --proxy-steps 30 --images 48 --calibration 16 --held-out 16 --steps 10} \
  2>&1 | tee "$out/sdxl_scale.txt"
echo "sdxl_scale: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$out/sdxl_scale.txt"
for log in "$work"/*.log; do
  [ -f "$log" ] && { echo "===== $(basename "$log")"; tail -n 40 "$log"; }
done > "$out/stage_logs.txt" 2>&1
start=$(date +%s)
timeout 180 python3 benchmarks/latency_model.py ${LATENCY:---teacher sdxl --device cuda --plans 16 --rounds 2} \
  2>&1 | tee "$out/latency_model.txt"
echo "latency_model: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$out/latency_model.txt"
