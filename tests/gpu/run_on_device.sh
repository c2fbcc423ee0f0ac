#!/usr/bin/env bash
# GPU checks of the megatron backend, in one device call. From the repository root on the device:
#   source .gpu-rig/setup.sh && tests/gpu/run_on_device.sh all         # everything 2 or 4 GPUs allow (~7 min + single)
#   source .gpu-rig/setup.sh && tests/gpu/run_on_device.sh single      # 1 GPU: logits, THD, parity, ckpt, failures
#   source .gpu-rig/setup.sh && tests/gpu/run_on_device.sh layouts N   # N GPUs: TP/PP/VPP/CP/DP/SP parity + resharded resume
#   source .gpu-rig/setup.sh && tests/gpu/run_on_device.sh runs        # whole `sft train` runs: async resume, exit codes, LoRA, lost rank
#   source .gpu-rig/setup.sh && tests/gpu/run_on_device.sh lora        # LoRA: parity with peft, export, ckpt, TP/PP (run_lora_on_device.sh)
# `all` runs independent checks side by side on disjoint GPUs (CUDA_VISIBLE_DEVICES lanes), then the
# 4-GPU layouts; SKIP_SINGLE=1 leaves out the 3-minute single-GPU suite, RUNS="a b" keeps only those
# layouts / scenarios. Results (JSON + logs) go to $OUT (or ./gpu-out); `make gpu-test` (pytest -m gpu)
# asserts on the JSON when GPU_RESULTS=$OUT is set. Needs .gpudata/ (gsm8k_train.jsonl, encoder.json,
# vocab.bpe) or KUBE_SFT_DATA pointing at ../shared/data.
set -uo pipefail
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/gpu-work}  # every log and JSON; $OUT gets the summaries + results-*.tgz
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$PWD/trainer_image:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NVTE_ALLOW_NONDETERMINISTIC_ALGO=0 CUDA_DEVICE_MAX_CONNECTIONS=1 TOKENIZERS_PARALLELISM=false
export KUBE_SFT_DATA=${KUBE_SFT_DATA:-.gpudata}
# the rig installs megatron-core without .pyc files: compile them once, so each of the ~20 processes
# below does not recompile megatron on import (seen: ~40 s from `sft train` start to its first step)
python3 -m compileall -q -j 0 "$(python3 -c 'import megatron, os; print(os.path.dirname(megatron.__file__))' 2>/dev/null)" \
  > /dev/null 2>&1 || true
mode=${1:-all}
gpus=${2:-$(nvidia-smi -L 2>/dev/null | wc -l)}
steps=${STEPS:-40}
half=$((steps / 2))

wanted() { [ -z "${RUNS:-}" ] || [[ " $RUNS " == *" $1 "* ]]; }

single() {  # the single-GPU suite (tests.gpu.megatron_checks single)
  python3 -m tests.gpu.megatron_checks single "$WORK/single.json" ${1:+--only "$1"} > "$WORK/single.log" 2>&1
  local rc=$?
  grep -E "^== |^\| " "$WORK/single.log"; [ $rc = 0 ] || tail -30 "$WORK/single.log"
  cp "$WORK/single.json" "$OUT/single${1:+-$1}.json"
  return $rc
}

layout() {  # name nproc args...: one layout under torchrun (GPUs: CUDA_VISIBLE_DEVICES)
  local name=$1 nproc=$2; shift 2
  wanted "$name" || return 0
  timeout "${RUN_TIMEOUT:-150}" torchrun --standalone --nproc-per-node "$nproc" -m tests.gpu.megatron_checks layout \
    "$WORK/$name.json" --steps "$steps" "$@" > "$WORK/$name.log" 2>&1 && echo "ok $name: $(tail -1 "$WORK/$name.log" | cut -c1-200)" \
    || { echo "FAILED $name"; tail -5 "$WORK/$name.log"; cat "$WORK/$name".json.rank*.err 2>/dev/null | tail -30; }
}

scenario() {  # name: one whole-run scenario (tests.gpu.megatron_runs)
  wanted "$1" || return 0
  timeout "${SCENARIO_TIMEOUT:-400}" python3 -m tests.gpu.megatron_runs "$1" "$WORK/run-$1.json" > "$WORK/run-$1.log" 2>&1
  grep "^== " "$WORK/run-$1.log" | cut -c1-400 || tail -5 "$WORK/run-$1.log"
}

lane() {  # GPUS command...: run in the background on those GPUs
  local devices=$1; shift
  ( export CUDA_VISIBLE_DEVICES=$devices; "$@" ) &
}

summary() {
  python3 - "$WORK" "$OUT" <<'PY'
import json, pathlib, sys
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
runs = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json")) if not p.stem.startswith(("single", "layouts", "run-", "runs"))}
runs = {k: v for k, v in runs.items() if v.get("losses")}
base = runs.get("tp1", {}).get("losses")
table = {}
for name, r in runs.items():
    if not base:
        break
    ref = base[r["first_step"]:]
    rel = [abs(a - b) / b for a, b in zip(r["losses"], ref)]
    table[name] = {"max_step_rel_vs_tp1": max(rel), "mean_step_rel_vs_tp1": sum(rel) / len(rel), "seconds": r["seconds"],
                   "device": r.get("device"), "world": r.get("dp", 1) * r["tp"] * r["pp"] * r.get("context_parallel_size", 1),
                   "first_step": r["first_step"], "last_loss": r["losses"][-1],
                   **({"cp_indices_match_te": r["cp_indices_match_te"]} if "cp_indices_match_te" in r else {})}
if table:
    (out / "layouts.json").write_text(json.dumps(table, indent=1))
    print("| run | GPUs | max rel vs TP=1 | mean rel | last loss | s |")
    for name, t in table.items():
        print(f"| {name} | {t['world']} | {t['max_step_rel_vs_tp1']:.4%} | {t['mean_step_rel_vs_tp1']:.4%} | {t['last_loss']:.5f} | {t['seconds']:.1f} |")
scen = {p.stem[4:]: json.loads(p.read_text()) for p in sorted(work.glob("run-*.json"))}
if scen:
    (out / "runs.json").write_text(json.dumps(scen, indent=1, default=str))
    print("| scenario | ok | numbers |")
    for name, r in scen.items():
        keep = {k: v for k, v in r.items() if not k.startswith(("losses", "tail", "rank0_tail", "work", "device"))}
        print(f"| {name} | {r.get('ok')} | {json.dumps(keep, default=str)[:300]} |")
PY
  tar czf "$OUT/results-$mode.tgz" -C "$WORK" $(cd "$WORK" && ls *.json *.log *.err 2>/dev/null) 2>/dev/null
}

case "$mode" in
lora)
  exec "$(dirname "$0")/run_lora_on_device.sh" ;;
single)
  single "${2:-}"; exit $? ;;
runs)
  for s in async_resume nan oom lora lost_rank; do scenario "$s"; done
  summary ;;
layouts)
  rm -rf /tmp/layout-ckpt
  layout tp1 1 --tp 1
  layout pp2 2 --pp 2
  layout tp2 2 --tp 2 --save-at "$half" --save /tmp/layout-ckpt
  layout dp2_from_tp2 2 --tp 1 --save-at "$half" --load /tmp/layout-ckpt
  layout pp2_from_tp2 2 --pp 2 --save-at "$half" --load /tmp/layout-ckpt
  layout pp2vpp2 2 --pp 2 --vpp 2
  layout cp2 2 --cp 2
  layout tp2sp 2 --tp 2 --sequence-parallel
  layout dp2 2 --tp 1
  layout tp2sp_fp8 2 --tp 2 --sequence-parallel --fp8 hybrid
  layout dp2_recompute_full 2 --recompute full
  layout pp2_recompute_selective 2 --pp 2 --recompute selective
  if [ "$gpus" -ge 4 ]; then
    layout tp2pp2 4 --tp 2 --pp 2 --save-at "$half" --save /tmp/layout-ckpt4
    layout dp4_from_tp2pp2 4 --tp 1 --save-at "$half" --load /tmp/layout-ckpt4
    layout tp2cp2 4 --tp 2 --cp 2 --sequence-parallel
    layout cp2dp2 4 --cp 2
  fi
  summary ;;
all)
  [ "$gpus" -ge 2 ] || { echo "all needs 2 or 4 GPUs (found $gpus): use single"; exit 2; }
  rm -rf /tmp/layout-ckpt /tmp/layout-ckpt4
  p1_gpu0() { layout tp1 1 --tp 1; scenario nan; }
  p1_gpu0_oom() { p1_gpu0; scenario oom; }
  cp_vpp() { layout cp2 2 --cp 2; layout pp2vpp2 2 --pp 2 --vpp 2; }
  resume_and_lora() { scenario async_resume; scenario lora; }
  recompute() { layout dp2_recompute_full 2 --recompute full; layout pp2_recompute_selective 2 --pp 2 --recompute selective; }
  if [ "$gpus" -ge 4 ]; then
    # phase 1: the 4-GPU layouts; phase 2: four lanes side by side; phase 3: two 2-GPU lanes
    layout tp2pp2 4 --tp 2 --pp 2 --save-at "$half" --save /tmp/layout-ckpt4
    layout dp4_from_tp2pp2 4 --tp 1 --save-at "$half" --load /tmp/layout-ckpt4
    layout tp2cp2 4 --tp 2 --cp 2 --sequence-parallel
    layout cp2dp2 4 --cp 2
    # (the OOM scenario takes all of GPU 0's memory: nothing else runs there meanwhile)
    lane 0 p1_gpu0_oom; lane 1 resume_and_lora; lane 2,3 scenario lost_rank; wait
    lane 0,1 cp_vpp; lane 2,3 recompute; wait
  else
    # 2 GPUs: the lost-rank pair (mostly waiting for its timeout) shares the GPUs with lanes 0 and 1
    lane 0 p1_gpu0; lane 1 resume_and_lora; lane 0,1 scenario lost_rank; wait
    cp_vpp; recompute
    scenario oom  # alone: it takes a whole GPU's memory
  fi
  [ -n "${SKIP_SINGLE:-}" ] || single
  summary ;;
*)
  echo "usage: $0 all | single [check] | layouts N | runs | lora"; exit 2 ;;
esac
