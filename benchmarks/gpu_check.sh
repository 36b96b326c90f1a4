#!/usr/bin/env bash
# One CUDA session's checks, in the order of their value (issue 7 and the CUDA path of issue 5):
#   1. benchmarks/gpu.py: matmul ceiling, xl training step (eager / compiled / dense temporal) vs Latte
#      (eager / compiled), VAE vs Wan at 49x256x256 bf16, 60 s sampling with `base`, bf16 vs fp32;
#   2. train.py with DeepSpeed ZeRO-2, bf16 and NCCL on one GPU: the `small` DiT on 33-frame shapes clips.
# Usage: bash benchmarks/gpu_check.sh OUT_DIR [VAE_CKPT]  (wheels for missing packages in .whl/ are installed first)
set -u
OUT=${1:-gpu_out}; VAE=${2:-}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, deepspeed, diffusers; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'diffusers', diffusers.__version__)"
timeout 420 python3 benchmarks/gpu.py 2>&1 | grep -v Warning | tee "$OUT/gpu.log"
if [ -n "$VAE" ]; then
  timeout 150 python3 -m torch.distributed.run --nproc_per_node 1 --master_port 29511 train.py --config configs/tiny.yaml \
    --model.preset small --data.source shapes --data.num_clips 256 --train.vae "$VAE" --train.zero_stage 2 \
    --train.steps 60 --train.log_every 20 --train.ckpt_every 60 --train.wandb disabled --train.out_dir /tmp/ds_run \
    2>&1 | grep -v Warning | tee "$OUT/deepspeed.log"
  ls /tmp/ds_run/checkpoints/* /tmp/ds_run/export 2>&1 | tee -a "$OUT/deepspeed.log"
fi
