#!/usr/bin/env bash
# Mini-scale RDP training that fits 2 CPU cores: the offline CIFAR-10 training images (5,085), a reduced
# purifier (width 32, 2 blocks per encoder/decoder), F = the Linf-robust convex-cifar-small's second
# conv block (neither the defended model nor the transfer source), 32x32 crops, 5 SSP steps, 5 epochs
# (about 530 Adam steps at the paper's lr 1e-4 and batch 48). Run from the repository root.
set -euo pipefail
robench train 'rdp:features="convex-cifar-small:layer=net.3",crop=32,ssp_steps=5,discriminator_width=16' \
  --model rdp:width=32,blocks=2 --dataset cifar10 --epochs 5 --batch-size 48 \
  --target resnet18-standard --eval-n 128 --eval-attack pgd:steps=10 --output checkpoints/rdp-mini-cifar10.pt "$@"
