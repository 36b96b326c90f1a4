python train.py --config checkpoints/tiny/config.yaml --train.init runs/low_init7 --train.vae checkpoints/tiny \
  --data.shards runs/two_f129,runs/two_f33,runs/two_f9 --data.batch_size 32 --data.num_workers 0 \
  --train.steps 800 --train.lr 5e-5 --train.warmup_steps 50 --train.ema_decay 0.998 --train.ckpt_every 400 \
  --flow.t_max 0.65 --flow.temporal_weight 1.0 --train.out_dir runs/dit_low_tw
