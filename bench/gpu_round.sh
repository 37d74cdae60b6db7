#!/usr/bin/env bash
# Issue 32's measurements on a lent GPU: two calls of the device tool, about 5 device minutes each.
#   bash bench/gpu_round.sh 1   # the owed training figures: part (i)'s compiled variants (bf16 weights,
#                               # NHWC GroupNorm in place, ZeRO-2 + fused AdamW), (j) GroupNorm + SiLU,
#                               # (c) the cascade stage at its crop, and where a training step's time goes
#   bash bench/gpu_round.sh 2   # inference: (g) compiled at 40/4/2/1 NFE, (e) the 2048² cascade, the
#                               # consistency step against the decode, where a sampling step's time goes
# JSON and profiles go to bench/results/gpu_<card>_<date>_*. The device's own torch lacks some of our
# pure-Python dependencies: carry their wheels (the list is in the stop-25 closing note) and
# `pip install --no-deps` them first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CARD=$($PYTHON -c "import torch; print(torch.cuda.get_device_name(0).split()[1].lower())")
OUT=bench/results/gpu_${CARD}_$(date +%F)
TRAINING_VARIANTS=zero0_compile_channels_last_fused_adamw,zero0_compile_channels_last_fused_adamw_group_norm
TRAINING_VARIANTS+=,zero0_compile_channels_last_fused_adamw_bf16_weights
TRAINING_VARIANTS+=,zero1_compile_channels_last_fused_adamw_bf16_weights_fp32_accumulation
TRAINING_VARIANTS+=,zero0_eager_channels_last_group_norm,zero2_eager_fused_adamw,zero2_compile_channels_last_fused_adamw
case "${1:?which round: 1 (training) or 2 (inference)}" in
  1)
    $PYTHON bench/gpu_check.py --parts cij --variants "$TRAINING_VARIANTS" --out "${OUT}_training.json"
    $PYTHON bench/profile_step.py configs/cfm_1k.yaml deepspeed.zero_optimization.stage=0 train.compile=true \
      train.channels_last=true train.fused_optimizer=true --out "${OUT}_profile_training"
    ;;
  2)
    $PYTHON bench/gpu_check.py --parts ge --out "${OUT}_inference.json"
    $PYTHON bench/consistency_step.py --size 1024 --out "${OUT}_consistency.json"
    $PYTHON bench/profile_step.py configs/cfm_1k.yaml --inference --out "${OUT}_profile_sampling"
    ;;
  *) echo "usage: bash bench/gpu_round.sh 1|2" >&2; exit 2 ;;
esac
