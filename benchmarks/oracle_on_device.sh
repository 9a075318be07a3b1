#!/usr/bin/env bash
# benchmarks/search_oracle.py's CPU work, spread over a lent device machine's cores (16 there, 2 here), plus
# the SDXL-size cache throughput on its GPU. The oracle's state folder is copied under $OUT and worked on
# there, so whatever finished comes back even when the run is stopped at its time limit; copied back over
# benchmarks/results/search_oracle here, a local rerun of search_oracle.py resumes from it.
#   here, once:   bash benchmarks/device_wheels.sh
#   device tool:  run(command="bash benchmarks/oracle_on_device.sh 30% 50%", carry=[".whl"], timeout_s=590)
# Arguments: the budget whose distillations (phase 4) to run, and a budget whose default searches (phase 1,
# each seed on its own core, then joining the oracle) and oracle search (phase 2, $ORACLE_WORKERS more
# workers sharing its journal) to run; "-" skips either. Each process runs on one thread, as here.
set -uo pipefail
cd "$(dirname "$0")/.."
distill=${1:-30%}
searches=${2:--}
deadline=$(( $(date +%s) + ${LIMIT_S:-540} ))  # every process stops by then, so the run ends tidily
left() { echo $(( deadline - $(date +%s) )); }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD" OMP_NUM_THREADS=1 PRUNER_THREADS=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >/dev/null 2>&1
  export PYTHONPATH="/tmp/site:$PWD"
fi
out=${OUT:-/tmp/oracle-out}
export STATE=$out/search_oracle
mkdir -p "$STATE" "$out/logs"
cp -r "${STATE_FROM:-benchmarks/results/search_oracle}/." "$STATE/"  # STATE_FROM: an earlier run's state
rm -f "$STATE"/finals/*.claim
nproc
pids=()

search_at() {  # $1 default|oracle, $2 budget, $3 seed: that search run or resumed; an oracle worker's is never
  # packed (a local rerun of search_oracle.py packs it), so several workers can share its journal
  timeout "$(left)" python3 - "$1" "$2" "$3" <<'PY'
import os
import sys
sys.path.insert(0, "benchmarks")
kind, budget, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.argv = ["search_oracle.py", "--budgets", budget, "--seeds", str(seed), "--out", os.environ["STATE"],
            "--scratch", f"/tmp/oracle-{kind}-{seed}-{os.getpid()}"]
import search_oracle as so
from search_vs_heuristics import search
args = so.parse()
if kind == "default":
    so.searched(budget, seed, args, "default", **so.default_settings(args))
else:
    search(budget, 0, args.out, args, "oracle", calibration=args.calibration, held_out=args.held_out)
print("done", kind, budget, seed)
PY
}

if [ "$distill" != "-" ]; then
  for i in $(seq 1 "${WORKERS:-8}"); do
    timeout "$(left)" python3 benchmarks/search_oracle.py --budgets "$distill" --out "$STATE" --recipes "$out/recipes" \
      --scratch "/tmp/oracle-scratch-$i" >"$out/logs/distill-$i.log" 2>&1 &
    pids+=($!)
    sleep 2  # the claims go to different plans
  done
fi
if [ "$searches" != "-" ]; then
  for s in 0 1 2; do  # each default search, then an oracle worker
    (search_at default "$searches" "$s" && search_at oracle "$searches" 0) >"$out/logs/default-$s.log" 2>&1 &
    pids+=($!)
  done
  for i in $(seq 1 "${ORACLE_WORKERS:-3}"); do
    sleep 5
    search_at oracle "$searches" 0 >"$out/logs/oracle-$i.log" 2>&1 &
    pids+=($!)
  done
fi
if command -v nvidia-smi >/dev/null && [ "${SDXL_CACHE:-1}" = 1 ]; then
  timeout "$(left)" python3 benchmarks/cache_throughput.py --sdxl --device cuda --rows 64 --processes 1 \
    --sources folder --markdown "$out/sdxl-cache.md" >"$out/logs/sdxl-cache.log" 2>&1 &
  pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p"; done
rm -f "$STATE"/finals/*.claim "$STATE"/*.lock
ls -la "$STATE" "$STATE/finals"
for f in "$out"/logs/*.log; do echo "== $f"; tail -c 300 "$f" | tr '\r' '\n' | tail -n 2; done
cat "$out/sdxl-cache.md" 2>/dev/null
tar czf "$out/state.tgz" -C "$out" search_oracle  # "%" in its names keeps the folder itself from coming back
