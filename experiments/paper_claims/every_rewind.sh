#!/bin/sh
# G against every Frankle & Carbin rewind of one paper-claims sweep, not only the best (1-S): the
# spread over the one-shot seeds for experiments/paper_claims/summarize.py's rewinds table. Each
# rewind is exported (SWEEP/rewind_exports/) and analysed against G without maps (--grid 2), into
# SWEEP/rewinds/seed_S/; G's whole-split Hessian is copied from SWEEP/analysis/parts (the cache
# key holds G's absolute path: run from the folder that ran the analysis). Resumable.
#   experiments/paper_claims/every_rewind.sh SWEEP        (after `kerasprune analyze --sweep SWEEP --out SWEEP/analysis`)
cd "$(dirname "$0")/../.." || exit 1
sweep=${1:?usage: every_rewind.sh SWEEP}
export KERASPRUNE_THREADS=${KERASPRUNE_THREADS:-1}
export KERASPRUNE_DATA_DIR=${KERASPRUNE_DATA_DIR:-/work/shared/datasets}
point=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['g_point'])" "$sweep/exports.json") || exit 1
rewinds=$sweep/runs/lottery_rewind/point_$(printf %03d "$point")
python -m kerasprune export "$rewinds" --recursive --no-compact --no-eval \
  --export-dir "$sweep/rewind_exports" >> "$sweep.rewinds.log" 2>&1 || exit 1
for seed_dir in "$rewinds"/seed_*/; do  # folders only: the sweep keeps seed_S.lock files beside them
  seed_dir=${seed_dir%/}
  seed=${seed_dir##*_}
  out=$sweep/rewinds/seed_$seed
  [ -d "$out/parts" ] || { mkdir -p "$out/parts" && cp "$sweep/analysis/parts/hessian_g.json" "$out/parts/"; }
  python -m kerasprune analyze --g "$sweep/exports/g" --oneshot "$(ls -d "$sweep"/rewind_exports/seed_${seed}_*/final)" \
    --out "$out" --hessian-examples 54000 --grid 2 >> "$sweep.rewinds.log" 2>&1 || exit 1
  echo "$out done"
done
