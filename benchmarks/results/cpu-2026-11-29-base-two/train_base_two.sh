set -e
python train.py --config checkpoints/tiny/config.yaml --train.init checkpoints/tiny --train.vae checkpoints/tiny \
  --data.shards runs/two_f129,runs/two_f33,runs/two_f9 --data.batch_size 32 --data.num_workers 0 \
  --train.steps 2000 --train.lr 1e-4 --train.warmup_steps 50 --train.ema_decay 0.998 --train.ckpt_every 250 \
  --train.out_dir runs/dit_two --resume auto
