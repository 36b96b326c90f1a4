set -e
cd /work/main
# Does fresh data pay where more passes over the same 7,400 clips stopped paying (cpu-2026-11-30-d8c/)?
# The same mix of lengths and two-object shares as the shipped 8-block stages, from four new seeds.
videodit-data cache --shapes 800 --seed 51 --p-two 0.6 --frames 129 --vae checkpoints/tiny --out runs/f_long_f129 \
  --shard-size 200 --batch-size 12
videodit-data cache --shapes 2500 --seed 52 --p-two 0.6 --frames 33 --vae checkpoints/tiny --out runs/f_bind_f33 \
  --shard-size 500 --batch-size 50
videodit-data cache --shapes 800 --seed 53 --p-two 0.85 --frames 129 --vae checkpoints/tiny --out runs/f_two_f129 \
  --shard-size 200 --batch-size 12
videodit-data cache --shapes 2500 --seed 54 --p-two 0.85 --frames 33 --vae checkpoints/tiny --out runs/f_two_f33 \
  --shard-size 500 --batch-size 50
# the shipped 8-block DiT (bf16, read back in fp32) trained on them only
python train.py --config checkpoints/tiny/config.yaml --train.init checkpoints/tiny --train.vae checkpoints/tiny \
  --data.shards runs/f_long_f129,runs/f_bind_f33,runs/f_two_f129,runs/f_two_f33 --data.batch_size 32 \
  --data.num_workers 0 --train.steps 1200 --train.lr 6e-5 --train.warmup_steps 50 --train.ema_decay 0.998 \
  --train.ckpt_every 500 --train.out_dir runs/dit_fresh --resume auto
