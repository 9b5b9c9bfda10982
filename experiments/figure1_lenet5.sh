#!/usr/bin/env bash
# Figures 1c and 1b (issue 18) from wherever they stand, on this machine or a fresh one: restores the
# carried LOBSTER runs and the committed tables, then runs what is left of LeNet-5 / Fashion-MNIST and
# then of LeNet-5 / MNIST, each with the paper's three baselines first, refreshing each setup's
# table, figure and status in experiments/results/<setup>/ when its sweep stops. Resumable: kill it
# and run it again. Two processes, one thread each (a LeNet-5 retraining is compute-bound on a core).
#
#   bash experiments/figure1_lenet5.sh            # from the project's root
#   JOBS=1 bash experiments/figure1_lenet5.sh     # leave a core free
#
# The sweeps' own logs go to stdout; the commands it runs are each setup README's.
set -euo pipefail
cd "$(dirname "$0")/.."
export KERASPRUNE_THREADS=1 KERASPRUNE_DATA_DIR="${KERASPRUNE_DATA_DIR:-../shared/datasets}"
JOBS="${JOBS:-2}"

python experiments/carry.py unpack-all runs/
for setup in lenet5_fashion_mnist lenet5_mnist; do
    python experiments/carry.py restore-table "experiments/results/$setup/results.csv" "runs/$setup"
    sweep=(kerasprune sweep "experiments/$setup.toml" --out "runs/$setup"
           --lobster-dir "runs/lobster_${setup}_reference" --jobs "$JOBS")
    "${sweep[@]}" --methods lottery_rewind random_reinit random_structure
    "${sweep[@]}"
    python experiments/figure1_table.py "experiments/$setup.toml" "runs/$setup"
done
