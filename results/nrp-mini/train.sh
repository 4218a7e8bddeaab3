#!/usr/bin/env bash
# Mini-scale NRP training that fits 2 CPU cores: the first 2,560 offline CIFAR-10 training images, a reduced
# NRP_resG generator (32 channels, 4 residual blocks instead of 64 / 23), F = resnet18-standard's first
# residual stage (as results/rdp-mini), 32x32 crops, 3 SSP steps within 16/255, ESRGAN's loss weights
# (the defaults), Adam lr 1e-4, batch 48, 3 epochs. Run from the repository root.
set -euo pipefail
robench train 'nrp:features="resnet18-standard:layer=net.layer1",crop=32,ssp_steps=3,discriminator_width=16' \
  --model nrp:arch=resg,nf=32,nb=4 --dataset cifar10 -n 2560 --epochs 3 --batch-size 48 \
  --target resnet18-standard --eval-n 128 --eval-attack pgd:steps=10 --output checkpoints/nrp-mini-cifar10.pt "$@"
