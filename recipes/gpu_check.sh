#!/usr/bin/env bash
# One CUDA session's work, in one command, inside a time budget (issue 7, the CUDA path of issue 5, and the
# shipped model of issue 6):
#   1. `videodit-data cache --shapes`: procedural clips rendered by DataLoader workers, encoded on the GPU by
#      the shipped VAE and text encoder (checkpoints/tiny) into shards on local disk;
#   2. benchmarks/gpu.py: matmul ceiling, xl training step (eager / compiled / dense temporal) vs Latte
#      (eager / compiled), VAE vs a Wan-architecture VAE of the same width at 49x256x256 bf16, 60 s sampling
#      with `base`, bf16 vs fp32;
#   3. train.py with DeepSpeed ZeRO-2, bf16 and NCCL on one GPU (a short run on those shards);
#   4. the shipped DiT fine-tuned from checkpoints/tiny on the shards (bf16 autocast, workers prefetching),
#      its step count sized by a short probe to end inside the budget; the export lands in OUT/.
#   5. optionally (VAE_STEPS > 0), at the same time on the same GPU: a decoder-only fine-tune of the shipped VAE
#      on procedural clips rendered on the fly (the encoder, so the latents the DiT sees, stay bit-identical).
# Usage, from the repository root: bash recipes/gpu_check.sh OUT_DIR [BUDGET_S] [CLIPS]
#   (wheels in .whl/ are installed first)
#   BENCH=0 skips steps 2-3 (a session that only trains: the rest of the budget goes to step 4);
#   BATCH (256) and PROBE (120 steps) size the fine-tune; STEPS=N skips the probe and trains N steps (stopped
#   early by SIGTERM, which checkpoints, if the budget runs out); TEXT=FOLDER caches and trains with that text
#   encoder (e.g. one from `videodit-data text-encoder OUT --tokenizer words`); EXTRA adds train.py options;
#   VAE_STEPS / VAE_BATCH (32) size step 5. VAEBENCH=1 first runs benchmarks/vae_gpu.py (every VAE kernel choice
#   vs the Wan-architecture VAE; log and kernel profile in OUT/). CONFIG (configs/tiny.yaml) is the config the
#   fine-tune starts from (e.g.
#   checkpoints/tiny/config.yaml to keep the shipped model's settings); SHORT=N also caches N 9-frame clips and
#   trains on both lengths (each batch from one); LONG=N also caches N 129-frame clips (what
#   flow.anchor_gap_prob cuts; pass it in EXTRA); SEED (0) seeds the procedural clips. INIT (checkpoints/tiny) is the
#   export the DiT starts from; INIT=none trains it from scratch (a new size, e.g.
#   INIT=none EXTRA="--model.patch [1,1,1] --model.hidden 256"), still on the shipped VAE and text encoder.
set -u
OUT=${1:-gpu_out}; BUDGET=${2:-560}; CLIPS=${3:-16000}; BATCH=${BATCH:-256}; PROBE=${PROBE:-120}
T0=$(date +%s); left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
mkdir -p "$OUT"
WORK=$(mktemp -d)  # this run's shards and training runs: never a stale export or cache from an earlier run
echo "shards and training runs under $WORK"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
python3 - <<'PY' | tee -a "$OUT/env.txt"
import importlib
for name in ("torch", "transformers", "deepspeed", "diffusers"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError:
        print(name, "not installed")
PY
if [ "${VAEBENCH:-0}" = 1 ]; then
  echo "== benchmarks/vae_gpu.py ($(left) s left)"
  timeout 200 python3 benchmarks/vae_gpu.py --profile "$OUT/vae_profile.txt" 2>&1 | grep --line-buffered -v Warning \
    | tee "$OUT/vae_gpu.log"
fi
LAT=$(python3 -c "import yaml; f = yaml.safe_load(open('checkpoints/tiny/config.yaml'))['flow']; print(f['latent_scale'], f['latent_shift'])")
set -- $LAT; SCALE=$1; SHIFT=$2

TXT_CACHE=""; TXT_TRAIN=""
if [ -n "${TEXT:-}" ] && ! python3 -c "from videodit.text_encoder import TextEncoder; from videodit.config import \
TextConfig; TextEncoder.from_config(TextConfig(pretrained='$TEXT'))(['a red circle moving up'])" >/dev/null; then
  echo "TEXT=$TEXT does not load here: caching and training with the shipped text encoder instead" | tee -a "$OUT/env.txt"
  TEXT=""
fi
if [ -n "${TEXT:-}" ]; then TXT_CACHE="--text-encoder $TEXT"; TXT_TRAIN="--text.pretrained $TEXT"; fi

VAE_STEPS=${VAE_STEPS:-0}
if [ "$VAE_STEPS" -gt 0 ]; then
  mkdir -p "$OUT/vae"
  echo "== VAE decoder fine-tune, $VAE_STEPS steps in the background ($(left) s left)" | tee "$OUT/vae/vae.log"
  VAE_ARGS="--config configs/vae_tiny.yaml --train.init checkpoints/tiny --vae.freeze_encoder true \
    --data.crop 0 --data.num_clips 200000 --data.batch_size ${VAE_BATCH:-32} --data.num_workers 5 --train.precision fp32 \
    --train.steps $VAE_STEPS --train.lr 2e-4 --train.warmup_steps 100 --train.ema_decay 0.999 --train.log_every 200 \
    --train.ckpt_every 100000 --train.wandb disabled --train.out_dir $WORK/vae_gpu"
  ( timeout -s TERM $(( $(left) - 30 )) python3 train.py $VAE_ARGS 2>&1 | tr '\r' '\n' | grep -v "^train vae" >> "$OUT/vae/vae.log"
    [ -f $WORK/vae_gpu/export/vae.safetensors ] || python3 train.py $VAE_ARGS --export-only 2>&1 | tail -2 >> "$OUT/vae/vae.log"
    cp $WORK/vae_gpu/export/vae.safetensors $WORK/vae_gpu/loss.png "$OUT/vae/" 2>/dev/null ) &
  VAE_PID=$!
fi

echo "== cache $CLIPS shapes clips ($(left) s left)" | tee "$OUT/train.log"
s=$(date +%s)
SEED=${SEED:-0}
# cache_clips TIMEOUT_S N SEED FRAMES SHARD_SIZE BATCH_SIZE: N procedural clips into $WORK/shards$FRAMES, appended to SHARDS
cache_clips() {
  timeout "$1" python3 -m videodit.data cache --shapes "$2" --seed "$3" --frames "$4" --size 64 --vae checkpoints/tiny \
    $TXT_CACHE --out $WORK/shards$4 --shard-size "$5" --batch-size "$6" --workers 12 2>&1 | grep -v Warning \
    | tee -a "$OUT/train.log"
  SHARDS=${SHARDS:+$SHARDS,}$WORK/shards$4
}
SHARDS=""
cache_clips 200 "$CLIPS" "$SEED" 33 2000 500
[ "${SHORT:-0}" -gt 0 ] && cache_clips 120 "$SHORT" $(( SEED + 1 )) 9 2000 1000
[ "${LONG:-0}" -gt 0 ] && cache_clips 300 "$LONG" $(( SEED + 2 )) 129 500 100
echo "cache wall $(( $(date +%s) - s )) s" | tee -a "$OUT/train.log"

COMMON="--config ${CONFIG:-configs/tiny.yaml} --data.shards $SHARDS --train.vae checkpoints/tiny --train.wandb disabled \
  --flow.latent_scale $SCALE --flow.latent_shift $SHIFT $TXT_TRAIN"
if [ "${BENCH:-1}" = 1 ]; then
echo "== gpu.py ($(left) s left)"
timeout $(( $(left) - 230 > 320 ? 320 : $(left) - 230 )) python3 benchmarks/gpu.py --repeats 6 2>&1 \
  | grep --line-buffered -v Warning | tee "$OUT/gpu.log"

echo "== DeepSpeed ZeRO-2 + NCCL ($(left) s left)" | tee "$OUT/deepspeed.log"
timeout 60 python3 -m torch.distributed.run --nproc_per_node 1 --master_port 29511 train.py $COMMON \
  --train.zero_stage 2 --data.batch_size $(( BATCH / 4 )) --train.steps 30 --train.log_every 10 --train.ckpt_every 30 \
  --train.out_dir $WORK/ds_run 2>&1 | grep -v Warning | tr '\r' '\n' | grep -v "^train dit" | tee -a "$OUT/deepspeed.log"
ls $WORK/ds_run/checkpoints/* $WORK/ds_run/export 2>&1 | tee -a "$OUT/deepspeed.log"
fi

INIT=${INIT:-checkpoints/tiny}
if [ "$INIT" = none ]; then INIT_ARG="--train.init="; else INIT_ARG="--train.init $INIT"; fi
TRAIN="$COMMON $INIT_ARG --data.batch_size $BATCH --data.num_workers 8 --train.lr 5e-4 \
  --train.warmup_steps 200 --train.ema_decay 0.999 --train.log_every 100 ${EXTRA:-}"
if [ -n "${STEPS:-}" ]; then
echo "== train $STEPS steps ($(left) s left)" | tee -a "$OUT/train.log"
else
echo "== probe ($(left) s left)" | tee -a "$OUT/train.log"
timeout 60 python3 train.py $TRAIN --train.steps $PROBE --train.log_every $(( PROBE / 2 )) --train.ckpt_every 1000 \
  --train.out_dir $WORK/probe 2>&1 | tr '\r' '\n' | grep "^step=" | tee -a "$OUT/train.log"
SPS=$(grep "^step=$PROBE " "$OUT/train.log" | sed 's/.*samples_per_s=\([0-9.]*\).*/\1/')
STEPS=$(python3 -c "print(max(200, int(($(left) - 45) * ${SPS:-0} / $BATCH) // 100 * 100))")
echo "== train $STEPS steps at $SPS samples/s ($(left) s left)" | tee -a "$OUT/train.log"
fi
timeout -s TERM $(( $(left) - 20 )) python3 train.py $TRAIN --train.steps "$STEPS" --train.ckpt_every 100000 \
  --train.out_dir $WORK/dit_gpu 2>&1 | tr '\r' '\n' | grep -v "^train dit" | tee -a "$OUT/train.log"
[ -f $WORK/dit_gpu/export/dit.safetensors ] || python3 train.py $TRAIN --train.steps "$STEPS" \
  --train.out_dir $WORK/dit_gpu --export-only 2>&1 | tail -2 | tee -a "$OUT/train.log"
cp $WORK/dit_gpu/export/dit.safetensors $WORK/dit_gpu/export/config.yaml $WORK/dit_gpu/loss.png "$OUT/" 2>/dev/null
[ -n "${VAE_PID:-}" ] && wait "$VAE_PID"
echo "== done ($(left) s left)" | tee -a "$OUT/train.log"
