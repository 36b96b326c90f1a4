cd /work/main
E="python -m videodit.eval.sample --num 10 --seconds 4 --vae-seconds 0"
OMP_NUM_THREADS=2 $E --lora runs/lora_light/export:1 --out /tmp/lora_exp/ev_lora > /tmp/lora_exp/eval_lora.log 2>&1
OMP_NUM_THREADS=2 $E --sample.expert_t 0 --out /tmp/lora_exp/ev_base0 > /tmp/lora_exp/eval_base_expert0.log 2>&1
python /tmp/lora_exp/brightness.py /tmp/lora_exp/ev_lora /tmp/lora_exp/ev_base0 > /tmp/lora_exp/brightness.log 2>&1
