#!/bin/sh
# Issue 17, LeNet-300 / MNIST part: for each LOBSTER seed of experiments/lobster/search_rules.sh
# (reference rule), G = its first operating point with >= 98% of the parameters pruned; 1-S =
# Frankle & Carbin rewinds of G's mask (sweep seeds 0-2, the best by validation is exported), with
# Liu et al. re-inits beside them; then `kerasprune analyze` of G against 1-S with the Hessian on
# the whole training split (54,000 images); then the same analysis in the paper's units (per-batch
# training loss, PSP L2 summed over units: docs/analysis.md), reusing the Hessian's cached parts;
# then G against every rewind (experiments/paper_claims/every_rewind.sh).
# Skips seeds whose LOBSTER run has not reached 98% yet.
# Resumable: rerun the same command (sweep and analyze both resume from their folders).
#   experiments/paper_claims/lenet300.sh [seeds...]      # default: 0 1 2
cd "$(dirname "$0")/../.." || exit 1
export KERASPRUNE_DATA_DIR=${KERASPRUNE_DATA_DIR:-/work/shared/datasets}
for seed in ${*:-0 1 2}; do
  lobster=runs/search_rules/reference_seed$seed
  point=$(python - "$lobster" <<'PY'
import csv, sys
try:
    rows = list(csv.DictReader(open(sys.argv[1] + "/operating_points.csv")))
except FileNotFoundError:
    rows = []
print(next((r["point"] for r in rows if float(r["pruned_params_pct"]) >= 98.0), ""))
PY
)
  if [ -z "$point" ]; then echo "seed $seed: $lobster has no point at >= 98% yet; skipped"; continue; fi
  echo "seed $seed: G = point $point of $lobster"
  sweep=runs/paper_claims/lenet300_ref_seed${seed}_p$point
  KERASPRUNE_THREADS=${KERASPRUNE_THREADS:-1} python -m kerasprune sweep experiments/lenet300_mnist_g_vs_1s.toml --out "$sweep" \
    --lobster-dir "$lobster" --points "$point" --seeds 0 1 2 \
    --methods lottery_rewind random_reinit --jobs 1 >> "$sweep.sweep.log" 2>&1 || exit 1
  sh experiments/paper_claims/analyse.sh "$sweep" || exit 1
done
