#!/usr/bin/env bash
# A larger `photo` (64 channels x 7 blocks: 0.58 M MACs/px, inside the 0.65 M budget), from scratch on
# photo's degradation settings. Runs on idle cycles only (SCHED_IDLE: nice 19 still took a third of a core
# from Ray's nice-15 workers), on one core; rerun this script to resume.
cd "$(dirname "$0")/../.."  # the checkout
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
resume=(); [ -f training/photo64/checkpoint.pt ] && resume=(--resume)
exec taskset -c 1 chrt --idle 0 upscale train ../shared/datasets/train290 -o training/photo64 \
  --arch compact --param channels=64 --param blocks=7 --loss l1 --patch 128 --batch 16 --steps 40000 --lr 5e-4 \
  --schedule cosine --seed 5 --no-amp --checkpoint-every 500 \
  --degradation realworld --degradation-param direct_prob=0.7 \
  --degradation-param 'noise_range=[1,15]' --degradation-param 'noise_range2=[1,10]' \
  --degradation-param 'poisson_scale_range=[0.05,1.5]' --degradation-param 'poisson_scale_range2=[0.05,1.0]' \
  --degradation-param 'jpeg_range=[40,95]' --degradation-param 'jpeg_range2=[40,95]' \
  --degradation-param 'resize_range=[0.5,1.5]' --degradation-param 'resize_range2=[0.5,1.2]' "${resume[@]}" "$@"
