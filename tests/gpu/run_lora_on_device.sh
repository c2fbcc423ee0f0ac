#!/usr/bin/env bash
# GPU checks of the megatron LoRA (tests/gpu/lora_checks.py) in one device call, 4 GPUs side by side (2 GPUs: the
# TP=2 / PP=2 runs follow the first two on GPUs 0,1):
#   source .gpu-rig/setup.sh && tests/gpu/run_lora_on_device.sh
#   GPU 0:    megatron LoRA vs torch+peft LoRA (100 steps), export -> peft, adapter-only checkpoint + resume
#   GPU 1:    LoRA TP=1 (the layout reference)
#   GPU 2,3:  LoRA TP=2 (saves at step STEPS/2) -> PP=2 resumed from the TP=2 checkpoint -> PP=2 fresh
# Results: $OUT/lora_single.json, $OUT/lora_layouts.json (+ results-lora.tgz with every log).
set -uo pipefail
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-lora}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$PWD/trainer_image:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NVTE_ALLOW_NONDETERMINISTIC_ALGO=0 CUDA_DEVICE_MAX_CONNECTIONS=1 TOKENIZERS_PARALLELISM=false
export KUBE_SFT_DATA=${KUBE_SFT_DATA:-.gpudata}
steps=${STEPS:-40}
half=$((steps / 2))
ckpt=$WORK/tp2-ckpt
rm -rf "$ckpt"

layout() {  # name gpus nproc args...
  local name=$1 gpus=$2 nproc=$3; shift 3
  CUDA_VISIBLE_DEVICES=$gpus timeout "${RUN_TIMEOUT:-150}" torchrun --standalone --nproc-per-node "$nproc" \
    -m tests.gpu.lora_checks layout "$WORK/lora_$name.json" --steps "$steps" "$@" > "$WORK/lora_$name.log" 2>&1 \
    && echo "ok $name: $(tail -1 "$WORK/lora_$name.log" | cut -c1-300)" \
    || { echo "FAILED $name"; tail -5 "$WORK/lora_$name.log"; cat "$WORK/lora_$name".json.rank*.err 2>/dev/null | tail -30; }
}

gpus=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
pair=2,3
[ "$gpus" -ge 4 ] || pair=0,1   # 2 GPUs: the pair runs after the single check and TP=1
layouts2() {
  layout tp2 $pair 2 --tp 2 --save-at "$half" --save "$ckpt"
  layout pp2_from_tp2 $pair 2 --pp 2 --save-at "$half" --load "$ckpt"
  layout pp2 $pair 2 --pp 2
}
(CUDA_VISIBLE_DEVICES=0 timeout "${SINGLE_TIMEOUT:-280}" python3 -m tests.gpu.lora_checks single "$WORK/lora_single.json" \
   > "$WORK/lora_single.log" 2>&1; echo "single rc=$?") &
layout tp1 1 1 --tp 1 &
if [ "$gpus" -ge 4 ]; then layouts2 & fi
wait
[ "$gpus" -ge 4 ] || layouts2
tail -3 "$WORK/lora_single.log"
python3 - "$WORK" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
runs = {p.stem[5:]: json.loads(p.read_text()) for p in sorted(work.glob("lora_*.json")) if p.stem != "lora_single"}
base = runs.get("tp1", {}).get("losses")
table = {}
for name, r in runs.items():
    if not base or not r.get("losses"):
        continue
    ref = base[r["first_step"]:]
    rel = [abs(a - b) / b for a, b in zip(r["losses"], ref)]
    table[name] = {"max_step_rel_vs_tp1": max(rel), "mean_step_rel_vs_tp1": sum(rel) / len(rel),
                   "first_step": r["first_step"], "last_loss": r["losses"][-1], "seconds": r["seconds"],
                   "trainable_per_rank": r["trainable"], "device": r.get("device")}
(work / "lora_layouts.json").write_text(json.dumps(table, indent=1))
print("| run | max rel vs TP=1 | mean rel | last loss | s |")
for name, t in table.items():
    print(f"| {name} | {t['max_step_rel_vs_tp1']:.4%} | {t['mean_step_rel_vs_tp1']:.4%} | {t['last_loss']:.5f} | {t['seconds']:.1f} |")
single = work / "lora_single.json"
if single.exists():
    s = json.loads(single.read_text())
    keys = ("ok", "error", "device", "params", "megatron_vs_torch", "first_last", "resume_max_abs_diff",
            "base_max_abs_change", "torch_init_max_abs_diff", "export", "checkpoint", "megatron_seconds", "torch_seconds")
    for k in keys:
        if k in s:
            print(f"| {k} | {json.dumps(s[k], default=str)[:700]} |")
PY
cp "$WORK"/lora_single.json "$WORK"/lora_layouts.json "$OUT/" 2>/dev/null
tar czf "$OUT/results-lora.tgz" -C "$WORK" $(cd "$WORK" && ls *.json *.log *.err 2>/dev/null)
