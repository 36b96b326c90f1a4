python train.py --config configs/vae_tiny.yaml --train.init checkpoints/tiny --vae.freeze_encoder true \
  --vae.detail_weight 0 --vae.latent_noise 0.15 --data.p_two 0.6 --data.crop 0 --data.num_clips 8000 --data.seed 49 \
  --data.batch_size 8 --train.steps 600 --train.lr 1e-4 --train.warmup_steps 30 --train.ckpt_every 300 \
  --train.out_dir runs/vae_dec9
