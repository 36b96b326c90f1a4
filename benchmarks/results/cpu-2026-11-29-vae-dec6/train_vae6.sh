python train.py --config configs/vae_tiny.yaml --train.init checkpoints/tiny --vae.freeze_encoder true \
  --vae.detail_weight 3 --data.p_two 0.8 --data.crop 0 --data.num_clips 16000 --data.seed 43 --data.batch_size 8 \
  --train.steps 2000 --train.lr 1.5e-4 --train.warmup_steps 50 --train.ckpt_every 250 --train.out_dir runs/vae_dec6
