set -e
cd /work/main
# the 8-block DiT of ../cpu-2026-11-29-grow8/ (2,000 x 32, EMA export) trained 2,200 x 32 more on the same clips
python train.py --config runs/dit_d8/export/config.yaml --train.init runs/dit_d8/export --train.vae checkpoints/tiny \
  --data.shards runs/long_f129,runs/bind2_f33,runs/two_f129,runs/two_f33 --data.batch_size 32 --data.num_workers 0 \
  --train.steps 2200 --train.lr 6e-5 --train.warmup_steps 50 --train.ema_decay 0.998 \
  --train.ckpt_every 500 --train.out_dir runs/dit_d8b --resume auto
