#!/usr/bin/env bash
# `make demo`'s held-out exact match for several seeds and backend:precision pairs, all runs at once
# (one GPU holds them easily). Prints one line per run: backend, precision, seed, exit code, seconds,
# accuracy after training.
#   bench/demo_seeds.sh OUTDIR "1 2 3 4 5" "torch:bf16 megatron:bf16"
set -u
out=$1 seeds=$2 combos=$3
mkdir -p "$out"
: > "$out/summary.txt"
for combo in $combos; do
  backend=${combo%%:*} precision=${combo##*:}
  for seed in $seeds; do
    run=$out/$backend-$precision-$seed
    (
      start=$(date +%s)
      python3 -c 'from sft_trainer.cli import app; app()' train --config examples/local/demo.yaml \
        output_dir="$run" trainer.seed="$seed" parallelism.backend="$backend" trainer.precision="$precision" \
        > "$run.log" 2>&1
      rc=$?
      echo "$backend $precision seed $seed rc=$rc $(($(date +%s) - start))s $(grep -o 'exact match after training: .*' "$run.log")" >> "$out/summary.txt"
    ) &
  done
done
wait
sort "$out/summary.txt"
