#!/usr/bin/env bash
# Mini-scale RDP training that fits 2 CPU cores: the first 2,560 offline CIFAR-10 training images, a
# reduced purifier (width 32, 2 blocks per encoder/decoder), F = resnet18-standard's first residual stage
# (its features are on the scale the paper's loss weights expect; with the much smaller features of
# convex-cifar-small the GAN term took over and P diverged), 32x32 crops, 3 SSP steps, 4 epochs at the
# paper's lr 1e-4 and batch 48. Run from the repository root.
set -euo pipefail
robench train 'rdp:features="resnet18-standard:layer=net.layer1",crop=32,ssp_steps=3,discriminator_width=16' \
  --model rdp:width=32,blocks=2 --dataset cifar10 -n 2560 --epochs 4 --batch-size 48 \
  --target resnet18-standard --eval-n 128 --eval-attack pgd:steps=10 --output checkpoints/rdp-mini-cifar10.pt "$@"
