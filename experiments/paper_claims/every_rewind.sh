#!/bin/sh
# G against every Frankle & Carbin rewind of one paper-claims sweep, not only the best (1-S): the
# spread over the one-shot seeds for experiments/paper_claims/summarize.py's rewinds table. Each
# rewind is exported (SWEEP/rewind_exports/) and analysed against G without maps (--grid 2), into
# SWEEP/rewinds/seed_S/ (log: SWEEP.rewinds.seed_S.log); G's whole-split Hessian is copied from
# SWEEP/analysis/parts. JOBS=2 analyses two rewinds at once (one thread each). Resumable.
#   experiments/paper_claims/every_rewind.sh SWEEP        (after `kerasprune analyze --sweep SWEEP --out SWEEP/analysis`)
#   experiments/paper_claims/every_rewind.sh SWEEP SEED   (one rewind; what the first form runs per seed)
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/../.." || exit 1
sweep=${1:?usage: every_rewind.sh SWEEP [SEED]}
export KERASPRUNE_THREADS=${KERASPRUNE_THREADS:-1}
export KERASPRUNE_DATA_DIR=${KERASPRUNE_DATA_DIR:-/work/shared/datasets}
if [ -n "$2" ]; then
  seed=$2
  out=$sweep/rewinds/seed_$seed
  [ -d "$out/parts" ] || { mkdir -p "$out/parts" && cp "$sweep/analysis/parts/hessian_g.json" "$out/parts/"; }
  python -m kerasprune analyze --g "$sweep/exports/g" --oneshot "$(ls -d "$sweep"/rewind_exports/seed_${seed}_*/final)" \
    --out "$out" --hessian-examples 54000 --grid 2 >> "$sweep.rewinds.seed_$seed.log" 2>&1 || exit 1
  echo "$out done"
  exit 0
fi
point=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['g_point'])" "$sweep/exports.json") || exit 1
rewinds=$sweep/runs/lottery_rewind/point_$(printf %03d "$point")
python -m kerasprune export "$rewinds" --recursive --no-compact --no-eval \
  --export-dir "$sweep/rewind_exports" >> "$sweep.rewinds.log" 2>&1 || exit 1
# Folders only (the sweep keeps seed_S.lock files beside them); xargs exits non-zero if any seed failed.
for seed_dir in "$rewinds"/seed_*/; do seed_dir=${seed_dir%/}; echo "${seed_dir##*_}"; done |
  xargs -P "${JOBS:-1}" -I SEED sh "$self" "$sweep" SEED
