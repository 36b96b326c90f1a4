cd /work/main
while pgrep -f "train_d8b.sh" > /dev/null; do sleep 10; done
set -e
test -f runs/dit_d8b/export/dit.safetensors
rm -rf runs/ck_d8b && cp -r checkpoints/tiny runs/ck_d8b
cp runs/dit_d8b/export/dit.safetensors runs/dit_d8b/export/config.yaml runs/ck_d8b/
python -m videodit.expert --checkpoint runs/ck_d8b --expert runs/low_init7 --t 0.61 --bf16
python benchmarks/eval_sample.py --checkpoint runs/ck_d8b --num 50 --seconds 60 --jobs 2 --vae-seconds 0 --seed 1000 --out runs/d8b_s1000 > runs/d8b_s1000.log 2>&1
