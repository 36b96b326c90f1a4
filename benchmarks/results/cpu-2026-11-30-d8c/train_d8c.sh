set -e
cd /work/main
# the shipped 8-block DiT (runs/dit_d8b/export: 2,000 + 2,200 x 32) trained 2,000 x 32 more on the same clips at a lower lr
python train.py --config runs/dit_d8b/export/config.yaml --train.init runs/dit_d8b/export --train.vae checkpoints/tiny \
  --data.shards runs/long_f129,runs/bind2_f33,runs/two_f129,runs/two_f33 --data.batch_size 32 --data.num_workers 0 \
  --train.steps 2000 --train.lr 4e-5 --train.warmup_steps 50 --train.ema_decay 0.998 \
  --train.ckpt_every 500 --train.out_dir runs/dit_d8c --resume auto
