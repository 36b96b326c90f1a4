cd /work/main
set -e
for s in 2000 3000 1000; do
python benchmarks/eval_sample.py --checkpoint runs/ck_d8b16 --num 50 --seconds 60 --jobs 2 --vae-seconds 0 --seed $s --out runs/d8b16_s$s > runs/d8b16_s$s.log 2>&1
done
