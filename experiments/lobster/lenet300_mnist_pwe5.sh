#!/bin/sh
# LOBSTER on LeNet-300-100 / MNIST, paper settings except a plateau patience of 5 epochs (paper: 20)
# so that high sparsity is reached within one session. (lr 0.1, lambda 1e-4, batch 100,
# twt 0.05, momentum 0, no LR decay). Resumable: rerun the same command after a kill.
# Result table: runs/lobster_lenet300_mnist_pwe5/operating_points.csv (copied to
# experiments/lobster/lenet300_mnist_pwe5_operating_points.csv when committed).
cd "$(dirname "$0")/../.." || exit 1
KERASPRUNE_DATA_DIR=${KERASPRUNE_DATA_DIR:-/work/shared/datasets} nohup python -m kerasprune lobster \
  --model lenet300 --dataset mnist --epochs 5000 --seed 0 --lr 0.1 --lmbda 1e-4 --batch-size 100 \
  --twt 0.05 --pwe 5 --out runs/lobster_lenet300_mnist_pwe5 >> runs/lobster_lenet300_mnist_pwe5.log 2>&1 &
echo "started: tail -f runs/lobster_lenet300_mnist_pwe5.log"
