set -e
while pgrep -f "train.py --config runs/p111_low_init" > /dev/null; do sleep 10; done
rm -rf runs/ck_p111low && cp -r checkpoints/tiny runs/ck_p111low
python -m videodit.expert --checkpoint runs/ck_p111low --expert runs/dit_p111low/export --t 0.61 --bf16
python benchmarks/eval_sample.py --checkpoint runs/ck_p111low --num 50 --seconds 60 --jobs 2 --vae-seconds 0 --seed 1000 --out runs/p111low_s1000
