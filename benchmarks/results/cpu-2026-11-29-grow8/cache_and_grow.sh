set -e
cd /work/main
videodit-data cache --shapes 1600 --seed 25 --p-two 0.6 --frames 129 --vae checkpoints/tiny --out runs/long_f129 --shard-size 200 --batch-size 12
videodit-data cache --shapes 2500 --seed 24 --p-two 0.6 --frames 33 --vae checkpoints/tiny --out runs/bind2_f33 --shard-size 500 --batch-size 50
python -m videodit.repatch --checkpoint checkpoints/tiny --depth 8 --out runs/d8_init
