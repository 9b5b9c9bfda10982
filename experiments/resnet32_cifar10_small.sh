#!/bin/sh
# Issue 18, ResNet-32 / CIFAR-10 at a small scale (experiments/resnet32_cifar10_small.toml): the
# sweep (LOBSTER, then every baseline at its first point), the analysis of G against 1-S
# (analyze --quick) and the results folder. One core; resumable: rerun the same command.
cd "$(dirname "$0")/.." || exit 1
export KERASPRUNE_THREADS=${KERASPRUNE_THREADS:-1}
export KERASPRUNE_DATA_DIR=${KERASPRUNE_DATA_DIR:-/work/shared/datasets}
out=runs/resnet32_cifar10_small
python -m kerasprune sweep experiments/resnet32_cifar10_small.toml --out $out --jobs 1 || exit 1
python -m kerasprune analyze --sweep $out --out $out/analysis --quick || exit 1
python experiments/figure1_table.py experiments/resnet32_cifar10_small.toml $out --setup resnet32_cifar10
