#!/bin/sh
# LOBSTER on LeNet-5 / MNIST with the authors' threshold search (the default), paper-code settings
# except pwe 5: the G of the paper's Figures 2-4 (issue 17) once it passes 99.57% pruned. One core.
# Resumable: rerun the same command after a kill.
# --init glorot: these runs began before the init setting (session 10) with Keras's Glorot init,
# and a run resumes only with the settings it began with; a new series would drop it (authors' init).
cd "$(dirname "$0")/../.." || exit 1
mkdir -p runs
KERASPRUNE_THREADS=1 \
KERASPRUNE_DATA_DIR=${KERASPRUNE_DATA_DIR:-/work/shared/datasets} nohup python -m kerasprune lobster \
  --model lenet5 --dataset mnist --epochs 5000 --seed 0 --init glorot --lr 0.1 --lmbda 1e-4 --batch-size 100 \
  --twt 0.05 --pwe 5 --out runs/lobster_lenet5_mnist_reference >> runs/lobster_lenet5_mnist_reference.log 2>&1 &
echo "started: tail -f runs/lobster_lenet5_mnist_reference.log"
