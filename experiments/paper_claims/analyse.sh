#!/bin/sh
# The analysis steps shared by lenet300.sh and lenet5.sh, for one paper-claims sweep: `kerasprune
# analyze` of G against 1-S (Hessian on the whole training split, 21 x 21 maps), then the same in the
# paper's units reusing the Hessian's cached parts (docs/analysis.md) and G against every rewind
# (every_rewind.sh). JOBS=2 gives the first analysis two threads and runs the other two side by side
# on a core each. Resumable.
#   experiments/paper_claims/analyse.sh SWEEP
#   JOBS=2 experiments/paper_claims/analyse.sh SWEEP
cd "$(dirname "$0")/../.." || exit 1
sweep=${1:?usage: analyse.sh SWEEP}
jobs=${JOBS:-1}
export KERASPRUNE_DATA_DIR=${KERASPRUNE_DATA_DIR:-/work/shared/datasets}
KERASPRUNE_THREADS=${KERASPRUNE_THREADS:-$jobs} python -m kerasprune analyze --sweep "$sweep" \
  --out "$sweep/analysis" --hessian-examples 54000 >> "$sweep.analyze.log" 2>&1 || exit 1
export KERASPRUNE_THREADS=${KERASPRUNE_THREADS:-1}
units=$sweep/analysis_paper_units
[ -d "$units/parts" ] || { mkdir -p "$units" && cp -r "$sweep/analysis/parts" "$units/"; }
paper_units() {
  python -m kerasprune analyze --sweep "$sweep" --out "$units" --hessian-examples 54000 \
    --train-loss per-batch --psp-l2 sum-units >> "$sweep.paper_units.log" 2>&1
}
if [ "$jobs" -gt 1 ]; then
  paper_units & units_pid=$!
  JOBS=$((jobs - 1)) sh experiments/paper_claims/every_rewind.sh "$sweep"; rewinds_status=$?
  wait "$units_pid" || exit 1
  exit "$rewinds_status"
fi
paper_units || exit 1
sh experiments/paper_claims/every_rewind.sh "$sweep"
