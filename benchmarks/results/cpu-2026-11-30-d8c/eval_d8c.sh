cd /work/main
while pgrep -f "train_d8c.sh" > /dev/null; do sleep 10; done
set -e
test -f runs/dit_d8c/export/dit.safetensors
# the candidate as it would ship: bf16 DiT + the shipped expert (bf16) below t = 0.61
rm -rf runs/ck_d8c && cp -r checkpoints/tiny runs/ck_d8c
python -m videodit.repatch --checkpoint runs/dit_d8c/export --bf16 --out runs/ck_d8c
python -m videodit.expert --checkpoint runs/ck_d8c --expert runs/low_init7 --t 0.61 --bf16
# set 1000 first; the loop was stopped after it (no gain there, see README.md)
for s in 1000 2000 3000; do
python benchmarks/eval_sample.py --checkpoint runs/ck_d8c --num 50 --seconds 60 --jobs 2 --vae-seconds 0 --seed $s --out runs/d8c_s$s > runs/d8c_s$s.log 2>&1
done
