set -e
python train.py --config runs/p111_low_init/config.yaml --train.init runs/p111_low_init --train.vae checkpoints/tiny \
  --data.shards runs/two_f129,runs/two_f33,runs/two_f9 --data.batch_size 32 --data.num_workers 0 \
  --train.steps 900 --train.lr 1.5e-4 --train.warmup_steps 100 --train.ema_decay 0.998 --train.ckpt_every 300 \
  --flow.t_max 0.65 --train.out_dir runs/dit_p111low
