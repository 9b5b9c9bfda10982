#!/usr/bin/env bash
# Figure 1b's magnitude one-shot and PolynomialDecay at LOBSTER's kernel count (magnitude_count =
# "kernels"), its sparsest point first: 112 (99.58%), then 56 and 33. Resumable: kill it and run it
# again; the table and figure go to experiments/results/lenet5_mnist_kernel_matched/.
#
#   bash experiments/lenet5_mnist_kernel_matched.sh            # from the project's root
#   JOBS=1 bash experiments/lenet5_mnist_kernel_matched.sh     # leave a core free
set -euo pipefail
cd "$(dirname "$0")/.."
export KERASPRUNE_THREADS=1 KERASPRUNE_DATA_DIR="${KERASPRUNE_DATA_DIR:-../shared/datasets}"
JOBS="${JOBS:-2}"
setup=lenet5_mnist_kernel_matched

python experiments/carry.py unpack-all runs/
python experiments/carry.py restore-table "experiments/results/$setup/results.csv" "runs/$setup"
# The dense models are Figure 1b's (same settings and seeds): reuse them where that sweep ran here.
if [[ -d runs/lenet5_mnist/dense && ! -e "runs/$setup/dense" ]]; then
    mkdir -p "runs/$setup" && ln -s ../lenet5_mnist/dense "runs/$setup/dense"
fi
sweep=(kerasprune sweep "experiments/$setup.toml" --out "runs/$setup" --lobster-dir runs/lobster_lenet5_mnist_reference)
for point in 112 56 33; do
    "${sweep[@]}" --jobs "$JOBS" --points "$point" --no-assemble
done
"${sweep[@]}" --jobs 1
python experiments/figure1_table.py "experiments/$setup.toml" "runs/$setup"
