cd /work/main
while pgrep -f "train_fresh.sh" > /dev/null; do sleep 10; done
set -e
test -f runs/dit_fresh/export/dit.safetensors
# the candidate as it would ship: bf16 DiT + the shipped expert (bf16) below t = 0.61
python -m videodit.expert --checkpoint checkpoints/tiny --extract runs/low_init7
rm -rf runs/ck_fresh && cp -r checkpoints/tiny runs/ck_fresh
python -m videodit.repatch --checkpoint runs/dit_fresh/export --bf16 --out runs/ck_fresh
python -m videodit.expert --checkpoint runs/ck_fresh --expert runs/low_init7 --t 0.61 --bf16
# set 1000 first; 2000 and 3000 only if set 1000 gains
python benchmarks/eval_sample.py --checkpoint runs/ck_fresh --num 50 --seconds 60 --jobs 2 --vae-seconds 0 \
  --seed 1000 --out runs/fresh_s1000 > runs/fresh_s1000.log 2>&1
