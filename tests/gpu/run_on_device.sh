#!/usr/bin/env bash
# GPU checks of the megatron backend, in one device call. From the repository root on the device:
#   source .gpu-rig/setup.sh && tests/gpu/run_on_device.sh single      # 1 GPU: logits, THD, parity, ckpt, failures
#   source .gpu-rig/setup.sh && tests/gpu/run_on_device.sh layouts N   # N GPUs: TP/PP/VPP/DP/SP parity + resharded resume
# Results (JSON + logs) go to $OUT (or ./gpu-out). Needs .gpudata/ (gsm8k_train.jsonl, encoder.json, vocab.bpe)
# or KUBE_SFT_DATA pointing at ../shared/data.
set -uo pipefail
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-work}  # every log and JSON; $OUT gets a few summaries + results-*.tgz
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$PWD/trainer_image:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NVTE_ALLOW_NONDETERMINISTIC_ALGO=0 CUDA_DEVICE_MAX_CONNECTIONS=1 TOKENIZERS_PARALLELISM=false
export KUBE_SFT_DATA=${KUBE_SFT_DATA:-.gpudata}
mode=${1:-single}
if [ "$mode" = single ]; then
  python3 -m tests.gpu.megatron_checks single "$WORK/single.json" ${2:+--only "$2"} > "$WORK/single.log" 2>&1
  rc=$?
  grep -E "^== |^\| " "$WORK/single.log"; [ $rc = 0 ] || tail -30 "$WORK/single.log"
  cp "$WORK/single.json" "$OUT/single${2:+-$2}.json"
  exit $rc
fi
gpus=${2:-2}
steps=${STEPS:-40}
run() {  # name nproc args...   (RUNS="a b" runs only those)
  local name=$1 nproc=$2; shift 2
  if [ -n "${RUNS:-}" ] && [[ " $RUNS " != *" $name "* ]]; then return; fi
  timeout "${RUN_TIMEOUT:-150}" torchrun --standalone --nproc-per-node "$nproc" -m tests.gpu.megatron_checks layout "$WORK/$name.json" \
    --steps "$steps" "$@" > "$WORK/$name.log" 2>&1 && tail -1 "$WORK/$name.log" \
    || { echo "FAILED $name"; cat "$WORK/$name".json.rank*.err 2>/dev/null | tail -30; }
}
ckpt=/tmp/layout-ckpt
rm -rf "$ckpt"
half=$((steps / 2))
run tp1 1 --tp 1
run pp2 2 --pp 2
run tp2 2 --tp 2 --save-at "$half" --save "$ckpt"
run dp2_from_tp2 2 --tp 1 --save-at "$half" --load "$ckpt"
run pp2_from_tp2 2 --pp 2 --save-at "$half" --load "$ckpt"
run pp2vpp2 2 --pp 2 --vpp 2
run tp2sp 2 --tp 2 --sequence-parallel
run dp2 2 --tp 1
run tp2sp_fp8 2 --tp 2 --sequence-parallel --fp8 hybrid
run dp2_recompute_full 2 --recompute full
run pp2_recompute_selective 2 --pp 2 --recompute selective
if [ "$gpus" -ge 4 ]; then
  run tp2pp2 4 --tp 2 --pp 2
  run dp4 4 --tp 1
fi
python3 - "$WORK" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem not in ("single", "layouts")}
runs = {k: v for k, v in runs.items() if v.get("losses")}
base = runs.get("tp1", {}).get("losses")
table = {}
for name, r in runs.items():
    if not base:
        break
    ref = base[r["first_step"]:]
    rel = [abs(a - b) / b for a, b in zip(r["losses"], ref)]
    table[name] = {"max_step_rel_vs_tp1": max(rel), "mean_step_rel_vs_tp1": sum(rel) / len(rel), "seconds": r["seconds"], "device": r.get("device")}
(out / "layouts.json").write_text(json.dumps(table, indent=1))
print("| run | max rel vs TP=1 | mean rel | s |")
for name, t in table.items():
    print(f"| {name} | {t['max_step_rel_vs_tp1']:.4%} | {t['mean_step_rel_vs_tp1']:.4%} | {t['seconds']:.1f} |")
PY
cp "$WORK/layouts.json" "$OUT/" 2>/dev/null
tar czf "$OUT/results-layouts.tgz" -C "$WORK" $(cd "$WORK" && ls *.json *.log *.err 2>/dev/null)
