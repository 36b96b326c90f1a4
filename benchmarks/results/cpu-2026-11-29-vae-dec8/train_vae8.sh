python train.py --config configs/vae_tiny.yaml --train.init checkpoints/tiny --vae.freeze_encoder true \
  --vae.detail_weight 0.5 --data.p_two 0.7 --data.crop 0 --data.num_clips 8000 --data.seed 48 --data.batch_size 8 \
  --train.steps 600 --train.lr 1e-4 --train.warmup_steps 30 --train.ckpt_every 300 --train.out_dir runs/vae_dec8
