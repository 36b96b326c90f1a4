#!/usr/bin/env bash
# The training chain that produced the shipped checkpoints/tiny, stage by stage: a record, not a quick start.
#
# It reproduces checkpoints/tiny (overwriting it): about 15 hours on a 2-core CPU, plus three GPU stages run on
# one H100 (minutes each there; on the CPU ~20 samples/s, e.g. ~7 hours for the first one's 1,900 x 256 samples):
# the 16,000-clip DiT fine-tune and the two `recipes/gpu_check.sh` sessions (word-level T5 beside a fourth
# decoder-only VAE stage; the first-chunk vector).
# Stage times and figures: docs/ and experiments/LOG.md. Intermediate runs go to runs/.
# One difference from the original run: the first VAE stage's export was its raw weights at step 2000, not its
# EMA (the EMA then had no warm-up); the EMA now warms up, so a rerun exports a usable EMA.
# To train a model on your own videos, follow the README instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# set one sample.* key of checkpoints/tiny/config.yaml (the chain tuned sampling by hand between stages)
set_sample() {
  python3 - "$1" "$2" <<'PY'
import re, sys
from pathlib import Path
key, value = sys.argv[1], sys.argv[2]
path = Path("checkpoints/tiny/config.yaml")
lines, section = path.read_text().splitlines(), None
for i, line in enumerate(lines):
    if re.match(r"^\S", line):
        section = line.rstrip(":")
    elif section == "sample" and re.match(rf"^\s+{key}:", line):
        lines[i] = re.sub(rf"^(\s+{key}:).*", rf"\1 {value}", line)
        break
else:
    sys.exit(f"sample.{key} not found in {path}")
path.write_text("\n".join(lines) + "\n")
PY
}

# VAE from scratch (30 min), then its decoder alone (14 min), then all of it (57 min)
python train.py --config configs/vae_tiny.yaml
python train.py --config configs/vae_tiny.yaml --train.init runs/vae_tiny/export --vae.freeze_encoder true \
    --train.out_dir runs/vae_tiny_dec --train.steps 1500 --train.lr 2e-4 --train.warmup_steps 50
python train.py --config configs/vae_tiny.yaml --train.init runs/vae_tiny_dec/export \
    --train.out_dir runs/vae_tiny_ft --train.steps 3000 --train.lr 4e-4 --train.warmup_steps 50
# 2,000 shapes clips of 33 frames, cached as latents and text embeddings, and the first DiT stage (54 min)
videodit-data shapes --out runs/shapes33_2k --num 2000 --frames 33 --fps 8 --size 64 --seed 0
videodit-data cache runs/shapes33_2k/manifest.jsonl --vae runs/vae_tiny_ft/export --frames 33 \
    --out runs/shapes2k_shards
python train.py --config configs/tiny.yaml

# GPU stage (H100): 16,000 clips, latent statistics pinned to the CPU stage's, whose weights it starts from
videodit-data cache --shapes 16000 --frames 33 --vae runs/dit_tiny/export --out runs/shapes16k_shards \
    --shard-size 2000 --batch-size 500 --workers 12
python train.py --config configs/tiny.yaml --data.shards runs/shapes16k_shards --train.init runs/dit_tiny/export \
    --flow.latent_scale 1.829729437828064 --flow.latent_shift -0.05565626174211502 --data.batch_size 256 \
    --data.num_workers 8 --train.lr 5e-4 --train.warmup_steps 200 --train.ema_decay 0.999 --train.steps 1900 \
    --train.out_dir runs/dit_tiny_gpu
rm -rf checkpoints/tiny && cp -r runs/dit_tiny_gpu/export checkpoints/tiny

# two decoder-only VAE stages: the latents (so the DiT) stay valid, the pictures get sharper
python train.py --config configs/vae_tiny.yaml --train.init runs/vae_tiny_ft/export --vae.freeze_encoder true \
    --train.out_dir runs/vae_tiny_dec2 --train.steps 1500 --train.lr 2e-4 --train.warmup_steps 50
python train.py --config configs/vae_tiny.yaml --train.init runs/vae_tiny_dec2/export --vae.freeze_encoder true \
    --train.out_dir runs/vae_tiny_dec3 --train.steps 2000 --train.lr 2e-4 --train.warmup_steps 50
cp runs/vae_tiny_dec3/export/vae.safetensors checkpoints/tiny/

# second GPU session (H100): word-level tiny T5, DiT fine-tuned on it beside a 4th decoder-only VAE stage
videodit-data text-encoder runs/t5_words --tokenizer words
TEXT=runs/t5_words/text_encoder BENCH=0 STEPS=3200 VAE_STEPS=4000 EXTRA="--flow.uniform_t_prob 0.3" \
    bash recipes/gpu_check.sh runs/gpu_words 565 16000
cp runs/gpu_words/dit.safetensors runs/gpu_words/config.yaml runs/gpu_words/vae/vae.safetensors checkpoints/tiny/
rm -rf checkpoints/tiny/text_encoder && cp -r runs/t5_words/text_encoder checkpoints/tiny/
# then a short GPU stage that switches on the first-chunk vector
BENCH=0 STEPS=1600 EXTRA="--model.first_chunk_embed true --flow.uniform_t_prob 0.3" \
    bash recipes/gpu_check.sh runs/gpu_first 255 12000
cp runs/gpu_first/dit.safetensors runs/gpu_first/config.yaml checkpoints/tiny/

# CPU (25 + 20 min): the first-frame fine-tune on 9-frame and 33-frame clips
videodit-data cache --shapes 2000 --seed 11 --frames 9 --vae checkpoints/tiny --out runs/shapes2k_f9 \
    --shard-size 1000
videodit-data cache --shapes 1500 --seed 12 --frames 33 --vae checkpoints/tiny --out runs/shapes1500_f33 \
    --shard-size 500 --batch-size 50
python train.py --config checkpoints/tiny/config.yaml --train.init checkpoints/tiny --train.vae checkpoints/tiny \
    --data.shards runs/shapes2k_f9,runs/shapes1500_f33 --data.batch_size 32 --data.num_workers 0 \
    --train.steps 1500 --train.lr 2e-4 --train.warmup_steps 50 --train.ema_decay 0.995 --train.ckpt_every 250 \
    --flow.clean_first_frame_prob 0.5 --flow.clean_context_prob 0.4 --sample.first_frame_first true \
    --train.out_dir runs/dit_first_frame
cp runs/dit_first_frame/export/dit.safetensors runs/dit_first_frame/export/config.yaml checkpoints/tiny/
videodit-data cache --shapes 1500 --seed 13 --frames 33 --vae checkpoints/tiny --out runs/shapes1500_f33b \
    --shard-size 500 --batch-size 50
python train.py --config checkpoints/tiny/config.yaml --train.init checkpoints/tiny --train.vae checkpoints/tiny \
    --data.shards runs/shapes2k_f9,runs/shapes1500_f33,runs/shapes1500_f33b --train.steps 1200 --train.lr 1e-4 \
    --flow.clean_context_prob 0.5 --train.out_dir runs/dit_first_frame2
cp runs/dit_first_frame2/export/dit.safetensors runs/dit_first_frame2/export/config.yaml checkpoints/tiny/
# guidance chosen on 100 held-out prompts x 60 s
set_sample cfg_scale 5.0
set_sample cfg_scale_later 7.0

# CPU (65 + 38 min): a 2-block text refiner on 60%-two-object clips, so attributes bind to their object
videodit-data cache --shapes 3000 --seed 22 --p-two 0.6 --frames 9 --vae checkpoints/tiny --out runs/bind_f9 \
    --shard-size 1000 --batch-size 100
videodit-data cache --shapes 2500 --seed 21 --p-two 0.6 --frames 33 --vae checkpoints/tiny --out runs/bind_f33 \
    --shard-size 500 --batch-size 50
videodit-data cache --shapes 3000 --seed 23 --p-two 0.6 --frames 9 --vae checkpoints/tiny --out runs/bind2_f9 \
    --shard-size 1000 --batch-size 100
videodit-data cache --shapes 2500 --seed 24 --p-two 0.6 --frames 33 --vae checkpoints/tiny --out runs/bind2_f33 \
    --shard-size 500 --batch-size 50
python train.py --config checkpoints/tiny/config.yaml --train.init checkpoints/tiny --train.vae checkpoints/tiny \
    --model.text_refiner 2 --data.shards runs/bind_f9,runs/bind_f33 --data.batch_size 32 --data.num_workers 0 \
    --train.steps 6000 --train.lr 2e-4 --train.warmup_steps 100 --train.ema_decay 0.998 --train.ckpt_every 500 \
    --train.out_dir runs/dit_refiner
python train.py --config runs/dit_refiner/export/config.yaml --train.init runs/dit_refiner/export \
    --train.vae checkpoints/tiny --data.shards runs/bind2_f9,runs/bind_f33,runs/bind2_f33 --train.steps 3000 \
    --train.lr 1e-4 --train.warmup_steps 50 --train.out_dir runs/dit_refiner2
cp runs/dit_refiner2/export/dit.safetensors runs/dit_refiner2/export/config.yaml checkpoints/tiny/

# CPU (34 min): trained the way chunked sampling lays out its cache (flow.anchor_gap_prob), 129-frame clips
videodit-data cache --shapes 1600 --seed 25 --p-two 0.6 --frames 129 --vae checkpoints/tiny --out runs/long_f129 \
    --shard-size 200 --batch-size 12
videodit-data cache --shapes 1600 --seed 26 --p-two 0.6 --frames 129 --vae checkpoints/tiny --out runs/long2_f129 \
    --shard-size 200 --batch-size 12
python train.py --config checkpoints/tiny/config.yaml --train.init checkpoints/tiny --train.vae checkpoints/tiny \
    --data.shards runs/long_f129,runs/long2_f129,runs/bind2_f33 --data.batch_size 32 --data.num_workers 0 \
    --train.steps 3000 --train.lr 1e-4 --train.warmup_steps 50 --train.ema_decay 0.998 --train.ckpt_every 500 \
    --flow.anchor_gap_prob 0.8 --train.out_dir runs/dit_gap2
cp runs/dit_gap2/export/dit.safetensors runs/dit_gap2/export/config.yaml checkpoints/tiny/
# a shorter one at half the learning rate with 9-frame opening clips added (~10 min)
python train.py --config checkpoints/tiny/config.yaml --train.init checkpoints/tiny --train.vae checkpoints/tiny \
    --data.shards runs/long_f129,runs/long2_f129,runs/bind2_f33,runs/bind2_f9 --data.batch_size 32 \
    --data.num_workers 0 --train.steps 1000 --train.lr 5e-5 --train.warmup_steps 50 --train.ema_decay 0.995 \
    --train.ckpt_every 500 --flow.anchor_gap_prob 0.8 --train.out_dir runs/dit_gap3
cp runs/dit_gap3/export/dit.safetensors runs/dit_gap3/export/config.yaml checkpoints/tiny/

# three stages with the loss weighted toward what stands out of each frame (flow.detail_weight; ~55 min)
python train.py --config checkpoints/tiny/config.yaml --train.init checkpoints/tiny --train.steps 2000 \
    --flow.detail_weight 2 --train.out_dir runs/dit_detail
python train.py --config checkpoints/tiny/config.yaml --train.init runs/dit_detail/export --train.steps 2000 \
    --flow.detail_weight 4 --train.out_dir runs/dit_detail2
python train.py --config checkpoints/tiny/config.yaml --train.init runs/dit_detail2/export --train.steps 800 \
    --train.lr 3e-5 --flow.detail_weight 4 --data.shards runs/long_f129,runs/bind2_f33,runs/bind2_f9 \
    --train.out_dir runs/dit_detail3
cp runs/dit_detail3/export/dit.safetensors runs/dit_detail3/export/config.yaml checkpoints/tiny/
# the guidance interval, context noise and stochastic sampling chosen on held-out prompts
set_sample cfg_low_t 0.55
set_sample cfg_scale_low 2.0
set_sample context_noise 0.05
set_sample churn 1.0

# grown to 6 blocks and trained on (CPU, 62 min at ~43 samples/s)
python -m videodit.repatch --checkpoint checkpoints/tiny --depth 6 --out runs/d6_init
python train.py --config runs/d6_init/config.yaml --train.init runs/d6_init --train.vae checkpoints/tiny \
    --data.shards runs/long_f129,runs/long2_f129,runs/bind2_f33,runs/bind2_f9 --data.batch_size 32 \
    --data.num_workers 0 --train.steps 5000 --train.lr 1e-4 --train.warmup_steps 100 --train.ema_decay 0.998 \
    --train.ckpt_every 1000 --train.out_dir runs/dit_d6
cp runs/dit_d6/export/dit.safetensors runs/dit_d6/export/config.yaml checkpoints/tiny/

# a low-noise expert: the same DiT fine-tuned on t <= 0.6, attached for the steps below t = 0.55 (23 min)
python train.py --config checkpoints/tiny/config.yaml --train.init checkpoints/tiny --train.vae checkpoints/tiny \
    --data.shards runs/long_f129,runs/bind2_f33,runs/bind2_f9 --data.batch_size 32 --data.num_workers 0 \
    --train.steps 2000 --train.lr 1e-4 --train.warmup_steps 50 --train.ema_decay 0.998 --train.ckpt_every 500 \
    --flow.t_max 0.6 --train.out_dir runs/dit_low
python -m videodit.expert --checkpoint checkpoints/tiny --expert runs/dit_low/export --t 0.55 --bf16
# that expert trained on (21 min) on t <= 0.65 with 85%-two-object clips, attached below t = 0.61
videodit-data cache --shapes 2500 --seed 31 --p-two 0.85 --frames 33 --vae checkpoints/tiny --out runs/two_f33 \
    --shard-size 500 --batch-size 50
videodit-data cache --shapes 3000 --seed 33 --p-two 0.85 --frames 9 --vae checkpoints/tiny --out runs/two_f9 \
    --shard-size 1000 --batch-size 100
videodit-data cache --shapes 800 --seed 32 --p-two 0.85 --frames 129 --vae checkpoints/tiny --out runs/two_f129 \
    --shard-size 200 --batch-size 12
python -m videodit.expert --checkpoint checkpoints/tiny --extract runs/low_init
python train.py --config checkpoints/tiny/config.yaml --train.init runs/low_init --train.vae checkpoints/tiny \
    --data.shards runs/two_f129,runs/two_f33,runs/two_f9 --data.batch_size 32 --data.num_workers 0 \
    --train.steps 1500 --train.lr 1e-4 --train.warmup_steps 50 --train.ema_decay 0.998 --train.ckpt_every 500 \
    --flow.t_max 0.65 --train.out_dir runs/dit_low3
python -m videodit.expert --checkpoint checkpoints/tiny --expert runs/dit_low3/export --t 0.61 --bf16

# 5th decoder-only VAE stage (21 min): whole frames, 60% two-object clips, L1 weighted toward the objects
python train.py --config configs/vae_tiny.yaml --train.init checkpoints/tiny --vae.freeze_encoder true \
    --vae.detail_weight 2 --data.p_two 0.6 --data.crop 0 --data.num_clips 8000 --data.seed 41 --data.batch_size 8 \
    --train.steps 1100 --train.lr 1.5e-4 --train.warmup_steps 50 --train.ckpt_every 250 --train.out_dir runs/vae_dec5
cp runs/vae_dec5/export/vae.safetensors checkpoints/tiny/
# 6th (58 min: 80% two-object, detail weight 3) and 7th (19 min: plain L1, PSNR 29.40 -> 32.43 dB), decoder-only
python train.py --config configs/vae_tiny.yaml --train.init checkpoints/tiny --vae.freeze_encoder true \
    --vae.detail_weight 3 --data.p_two 0.8 --data.crop 0 --data.num_clips 16000 --data.seed 43 --data.batch_size 8 \
    --train.steps 2000 --train.lr 1.5e-4 --train.warmup_steps 50 --train.ckpt_every 250 --train.out_dir runs/vae_dec6
cp runs/vae_dec6/export/vae.safetensors checkpoints/tiny/
python train.py --config configs/vae_tiny.yaml --train.init checkpoints/tiny --vae.freeze_encoder true \
    --vae.detail_weight 0 --data.p_two 0.5 --data.crop 0 --data.num_clips 8000 --data.seed 47 --data.batch_size 8 \
    --train.steps 600 --train.lr 1e-4 --train.warmup_steps 30 --train.ckpt_every 300 --train.out_dir runs/vae_dec7
cp runs/vae_dec7/export/vae.safetensors checkpoints/tiny/

# the DiT grown to 8 blocks, two CPU stages (71 + 73 min), stored in bf16, the 6-block expert attached again
python -m videodit.expert --checkpoint checkpoints/tiny --extract runs/low_init7
python -m videodit.repatch --checkpoint checkpoints/tiny --depth 8 --out runs/d8_init
python train.py --config runs/d8_init/config.yaml --train.init runs/d8_init --train.vae checkpoints/tiny \
    --data.shards runs/long_f129,runs/bind2_f33,runs/two_f129,runs/two_f33 --data.batch_size 32 --data.num_workers 0 \
    --train.steps 2000 --train.lr 1e-4 --train.warmup_steps 50 --train.ema_decay 0.998 --train.ckpt_every 500 \
    --train.out_dir runs/dit_d8
python train.py --config runs/dit_d8/export/config.yaml --train.init runs/dit_d8/export --train.vae checkpoints/tiny \
    --data.shards runs/long_f129,runs/bind2_f33,runs/two_f129,runs/two_f33 --data.batch_size 32 --data.num_workers 0 \
    --train.steps 2200 --train.lr 6e-5 --train.warmup_steps 50 --train.ema_decay 0.998 --train.ckpt_every 500 \
    --train.out_dir runs/dit_d8b
python -m videodit.repatch --checkpoint runs/dit_d8b/export --bf16 --out checkpoints/tiny
python -m videodit.expert --checkpoint checkpoints/tiny --expert runs/low_init7 --t 0.61 --bf16

# the result, and its held-out evaluation (set 1000; experiments/LOG.md has all three sets)
python sample.py --prompt "a red circle moving to the right" --seconds 60 --preview outputs/sheet.png
python -m videodit.eval.sample --checkpoint checkpoints/tiny --num 50 --seconds 60 --jobs 2 --vae-seconds 0 \
    --seed 1000 --out runs/eval_s1000
