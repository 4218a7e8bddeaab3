#!/usr/bin/env bash
# Mini-scale HGD training that fits 2 CPU cores: the first 2,560 offline CIFAR-10 training images, a reduced
# DUNET (width 16: stages of 16..64 channels instead of 64..256) built for 32x32 images, trained as DIR
# retrains HGD on CIFAR-10: PGD-5 examples (8/255, step 2/255) against the frozen resnet18-standard, FGD on
# its last feature map (layer4); Adam lr 0.01, batch 32 (HGD's), 3 epochs with the lr x0.1 from epoch 2 and
# x0.01 from epoch 3 (HGD's decays after 60 % and 90 % of the epochs). Run from the repository root.
set -euo pipefail
robench train hgd:attack=pgd \
  --model hgd:input_size=32,width=16 --dataset cifar10 -n 2560 --epochs 3 --milestones 2,3 --batch-size 32 \
  --target resnet18-standard --eval-n 128 --eval-attack pgd:steps=10 --output checkpoints/hgd-mini-cifar10.pt "$@"
