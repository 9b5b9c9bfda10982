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
           --lobster-dir "runs/lobster_${setup}_reference")
    "${sweep[@]}" --jobs "$JOBS" --methods lottery_rewind random_reinit random_structure
    if (( JOBS > 1 )); then
        # The IMP chains (hours each, one round after another) start at once on one process while
        # the others take the one-shot runs and then the chains left free, so no chain runs alone
        # on one core at the end (the sweep's own order puts them last). Locks keep them apart.
        "${sweep[@]}" --jobs 1 --methods imp --no-assemble &
        chains=$!
        trap 'kill "$chains" 2>/dev/null' EXIT  # the other sweep failed: stop the chains too
        "${sweep[@]}" --jobs $((JOBS - 1))
        wait "$chains"
        trap - EXIT
    else
        "${sweep[@]}" --jobs 1
    fi
    python experiments/figure1_table.py "experiments/$setup.toml" "runs/$setup"
done
