#!/bin/sh
# Issue 13: the authors' threshold search ("reference", the default) against kerasprune's first rule
# ("conservative") on LeNet-300 / MNIST, 3 seeds each, until an operating point has >= 98% of the
# parameters pruned or 1,500 epochs. Paper-code settings except pwe 5 (as the committed headline
# run; see README.md). Runs one after another on one core, in the order ref/cons seed 0, seed 1,
# seed 2 so that a partial queue still gives paired results. Resumable: rerun the same command.
#   JOBS=2 experiments/lobster/search_rules.sh     # two runs at once
# --init glorot: these runs began before the init setting (session 10) with Keras's Glorot init,
# and a run resumes only with the settings it began with; a new series would drop it (authors' init).
cd "$(dirname "$0")/../.." || exit 1
mkdir -p runs/search_rules
for seed in 0 1 2; do for rule in reference conservative; do echo "$rule $seed"; done; done |
  KERASPRUNE_THREADS=1 \
  KERASPRUNE_DATA_DIR=${KERASPRUNE_DATA_DIR:-/work/shared/datasets} \
  xargs -P "${JOBS:-1}" -L 1 sh -c 'python -m kerasprune lobster --model lenet300 --dataset mnist \
    --epochs 1500 --seed "$1" --init glorot --lr 0.1 --lmbda 1e-4 --batch-size 100 --twt 0.05 --pwe 5 \
    --threshold-search "$0" --stop-at-pruned 98 --out "runs/search_rules/${0}_seed$1" \
    >> "runs/search_rules/${0}_seed$1.log" 2>&1'
