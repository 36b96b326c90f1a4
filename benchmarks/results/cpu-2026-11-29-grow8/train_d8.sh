set -e
cd /work/main
python train.py --config runs/d8_init/config.yaml --train.init runs/d8_init --train.vae checkpoints/tiny \
  --data.shards runs/long_f129,runs/bind2_f33,runs/two_f129,runs/two_f33 --data.batch_size 32 --data.num_workers 0 \
  --train.steps 2000 --train.lr 1e-4 --train.warmup_steps 50 --train.ema_decay 0.998 \
  --train.ckpt_every 500 --train.out_dir runs/dit_d8 --resume auto
