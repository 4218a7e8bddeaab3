#!/usr/bin/env bash
# The checkpoints of benchmarks/dir2023/table1-mini.yaml, at mini scale on 2 CPU cores (not the paper's
# scale): every network is trained on the first 2,560 offline CIFAR-10 training images. The target is
# an adversarially trained ResNet-20 (PGD-5 AT, 15 epochs) instead of DIR's ResNet-18; every denoiser is
# trained in front of it at a reduced width, with DIR's training attack (PGD-5, 8/255, step 2/255) where
# it has one; NRP is the self-supervised one of results/nrp-mini/train.sh. Each command resumes when
# rerun. Run from the repository root with ROBENCH_DATA=../shared/data.
set -euo pipefail
T=checkpoints/mini/resnet20-at.pt
common=(--dataset cifar10 -n 2560 --eval-n 128 --eval-attack pgd:steps=10 "$@")
robench train at --model resnet20 --epochs 15 --milestones 10,13 --output "$T" "${common[@]}"
robench train dir:pretrain_epochs=1 --model dir:encoder_depth=1,decoder_depth=1,embed_dim=48,num_heads=3 \
  --target "resnet20:weights=$T" --epochs 3 --milestones 3 --eval-eot 2 --output checkpoints/mini/dir.pt "${common[@]}"
robench train ape-gan:attack=pgd --model ape-gan:width=32 --target "resnet20:weights=$T" --epochs 3 \
  --output checkpoints/mini/ape-gan.pt "${common[@]}"
robench train hgd:attack=pgd --model hgd:input_size=32,width=16 --target "resnet20:weights=$T" --epochs 3 \
  --milestones 2,3 --batch-size 32 --output checkpoints/mini/hgd.pt "${common[@]}"
robench train jatp --model jatp:width=16 --target "resnet20:weights=$T" --epochs 3 --milestones 2,3 \
  --batch-size 32 --output checkpoints/mini/jatp.pt "${common[@]}"
[ -f checkpoints/nrp-mini-cifar10.pt ] || bash results/nrp-mini/train.sh
