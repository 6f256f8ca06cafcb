#!/bin/bash
# Peak resident memory (VmHWM of the child peft process, sampled every 10 ms) of train (LoRA, base_dtype bfloat16),
# merge, quantize (nf4) and eval on two llama3-shaped bf16 folders with a 128,256-token vocabulary: hidden 32
# (16.6 MB of weights) and hidden 512 (272 MB). Issue 12 item 4; see docs/benchmarks.md "Memory with a 128k vocabulary".
#
# usage: bash bench/memory/peak_rss.sh PATH/TO/peft.dll [WORK_DIR]
#   e.g. dotnet build tests/Peft.Tests -c Release && bash bench/memory/peak_rss.sh tests/Peft.Tests/bin/Release/net10.0/peft.dll
set -euo pipefail
dll=$(realpath "$1"); here=$(cd "$(dirname "$0")" && pwd); tok="$here/../../../shared/data/llama3_tokenizer"
[ -d "$tok" ] || tok="$here/../../shared/data/llama3_tokenizer"
work=${2:-$(mktemp -d /tmp/peft-peak-rss-XXXX)}
peak() {  # peak KiB of: dotnet $dll "$@"
  dotnet "$dll" "$@" > "$work/out.txt" 2>&1 & local pid=$! hwm=0 v
  while kill -0 $pid 2>/dev/null; do
    v=$(awk '/^VmHWM:/ {print $2}' /proc/$pid/status 2>/dev/null || true); [ -n "$v" ] && [ "$v" -gt "$hwm" ] && hwm=$v
    sleep 0.01
  done
  wait $pid || { cat "$work/out.txt" >&2; exit 1; }
  echo $hwm
}
printf "%-8s %-10s %12s %14s\n" verb hidden "weights MiB" "peak RSS MiB"
for hidden in 32 512; do
  d="$work/h$hidden"; rm -rf "$d"; mkdir -p "$d"
  python3 "$here/write_folder.py" $hidden "$d/model"; cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$d/model/"
  python3 - "$d" <<'PY'
import json, sys
d = sys.argv[1]
open(d + "/rows.jsonl", "w").write("".join(json.dumps({"instruction": f"Count to {i % 4 + 2}.", "output": " ".join(str(j) for j in range(1, i % 4 + 3))}) + "\n" for i in range(8)))
json.dump({"model": {"path": d + "/model"}, "method": {"name": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
           "data": {"path": d + "/rows.jsonl", "seq_len": 32, "validation_fraction": 0},
           "training": {"seed": 3, "batch_size": 2, "max_steps": 2, "learning_rate": 0.01, "log_every": 1, "num_threads": 1, "base_dtype": "bfloat16"},
           "output": {"dir": d + "/run"}}, open(d + "/train.json", "w"))
open(d + "/eval.txt", "w").write("Hello, my dog is cute.\n\nThe quick brown fox jumps over the lazy dog.\n")
PY
  mib=$(( $(stat -c %s "$d/model/model.safetensors") / 1048576 ))
  printf "%-8s %-10s %12s %14s\n" train $hidden $mib $(( $(peak train --config "$d/train.json") / 1024 ))
  printf "%-8s %-10s %12s %14s\n" merge $hidden $mib $(( $(peak merge --model "$d/model" --adapter "$d/adapter" --out "$d/merged") / 1024 ))
  printf "%-8s %-10s %12s %14s\n" quantize $hidden $mib $(( $(peak quantize --model "$d/model" --method nf4 --out "$d/nf4") / 1024 ))
  printf "%-8s %-10s %12s %14s\n" eval $hidden $mib $(( $(peak eval --model "$d/model" --data "$d/eval.txt") / 1024 ))
  rm -rf "$d"
done
[ -z "${2:-}" ] && rm -rf "$work"
