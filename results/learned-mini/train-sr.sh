#!/usr/bin/env bash
# Mini-scale SR training that fits 2 CPU cores: a reduced EDSR x2 (32 features, 4 residual blocks instead
# of EDSR baseline's 64 / 16; 0.12 M parameters) trained with EDSR's L1 loss on x2 bicubic pairs (16 -> 32
# pixels) of the first 2,560 offline CIFAR-10 training images: whole 32x32 images as the HR patches, EDSR's
# flips and rotations, Adam lr 1e-4 (EDSR's), batch 16, 20 epochs (3,200 steps). No classifier is involved.
# Run from the repository root with ROBENCH_DATA=../shared/data.
set -euo pipefail
robench train sr:patch=32 --model sr:n_feats=32,n_resblocks=4 --dataset cifar10 -n 2560 --epochs 20 \
  --batch-size 16 --output checkpoints/sr-mini-cifar10.pt "$@"
