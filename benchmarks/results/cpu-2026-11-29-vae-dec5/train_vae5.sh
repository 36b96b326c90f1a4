python train.py --config configs/vae_tiny.yaml --train.init checkpoints/tiny --vae.freeze_encoder true \
  --vae.detail_weight 2 --data.p_two 0.6 --data.crop 0 --data.num_clips 8000 --data.seed 41 --data.batch_size 8 \
  --train.steps 1100 --train.lr 1.5e-4 --train.warmup_steps 50 --train.ckpt_every 250 --train.out_dir runs/vae_dec5
