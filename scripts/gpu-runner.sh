#!/usr/bin/env bash
# The GPU suite's runner (the bundle's run.sh). Runs on a GPU host whose python3 imports torch
# 2.11.0+cu130; needs no Rust and no network. It always reports: every step runs under
# `timeout` within a per-step budget and a budget for the whole call, the summary is rewritten
# after every step and printed again on exit (also when a step fails, hangs or the run is
# interrupted), and a failure in one test does not stop the others (each test is its own
# process).
#
#   SUITE     comma-separated parts (default: smoke):
#               smoke     environment facts, doctor, CUDA loading, allocator, streams, one
#                         kernel, pinned memory and one streamed step (≤ 3 min)
#               tests     every GPU test, one process each; kernel tests with
#                         CUDA_LAUNCH_BLOCKING=1
#               sanitize  compute-sanitizer memcheck on the kernel tests (when the tool exists)
#               kernels, attention, vae   the criterion microbenchmarks
#               offload, cards            ltx-i2v bench offload / bench cards
#               cards13b  the multi-scale flow with 13B shapes on a 16 GiB card (model, sequential)
#               all       every part above
#   RESULTS   where logs go (default: $TMPDIR/ltx-gpu-results, outside the bundle)
#   OUT       if set, SUMMARY.txt and a few key files are copied there after every step
#   LTX_RUN_BUDGET_S   seconds for the whole call (default 450): a step gets what is left
#   LTX_REQUIRE_CUDA   exported as 1 when nvidia-smi lists a GPU, so a test or bench that
#                      cannot open the device fails instead of skipping (set 0 to opt out)
#
# Exit status: 0 when every step passed or skipped, 1 when any failed or timed out, 2 when
# python3 cannot import torch.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
results=${RESULTS:-${TMPDIR:-/tmp}/ltx-gpu-results}
budget=${LTX_RUN_BUDGET_S:-450}
start=$(date +%s)
mkdir -p "$results"
: >"$results/steps.tsv"
suite=",${SUITE:-smoke},"
[[ "$suite" == *",all,"* ]] && suite=",smoke,tests,sanitize,kernels,attention,vae,offload,cards,cards13b,"
want() { [[ "$suite" == *",$1,"* ]]; }

# Copies the summary and a few key files to $OUT (at most 8 files come back from there).
publish() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT" 2>/dev/null || return 0
  for f in SUMMARY.txt env.txt doctor.txt failures.txt; do
    [ -f "$results/$f" ] && cp "$results/$f" "$OUT/$f"
  done
  # Every log and JSON result in one archive (criterion's HTML left out).
  (cd "$results" && tar czf "$OUT/results.tar.gz" --exclude='*.html' --exclude='*.svg' . 2>/dev/null)
}

summarize() {
  "$py" - "$results" "$suite" >"$results/SUMMARY.txt.new" 2>&1 <<'PY' || cp "$results/steps.tsv" "$results/SUMMARY.txt.new"
import json, os, re, sys
results, suite = sys.argv[1], sys.argv[2]
rows = []
def read(name):
    path = os.path.join(results, name)
    return open(path, errors="replace").read() if os.path.exists(path) else ""
steps = [l.split("\t") for l in read("steps.tsv").splitlines() if l.count("\t") >= 3]
for name, status, secs, log in steps:
    rows.append(("step", name, f"{status} ({float(secs):.0f} s)" + ("" if status in ("pass", "skipped") else f": see {log}")))
crit = os.path.join(results, "criterion")
means = {}
for dirpath, _, files in os.walk(crit):
    if dirpath.endswith(os.sep + "new") and "estimates.json" in files and "benchmark.json" in files:
        est = json.load(open(os.path.join(dirpath, "estimates.json")))
        bench = json.load(open(os.path.join(dirpath, "benchmark.json")))
        ns = est["mean"]["point_estimate"]
        bid = bench.get("full_id") or bench.get("title")
        tp = bench.get("throughput") or {}
        figure = f"{ns / 1e3:.1f} us"
        if "Bytes" in tp:
            figure += f", {tp['Bytes'] / ns:.1f} GB/s"
        if "Elements" in tp and bid.startswith("attention/"):
            figure += f", {tp['Elements'] / ns / 1e3:.1f} TFLOP/s"
        means[bid] = ns
        rows.append(("bench", bid, figure))
for bid, ns in sorted(means.items()):
    if "/kernel/" in bid:
        ref = bid.replace("/kernel/", "/tch_reference/")
        if ref in means:
            rows.append(("ratio", bid.replace("/kernel/", "/kernel-vs-tch/"), f"{means[ref] / ns:.2f}x faster than tch"))
        for other, label in (("diffusers_sliced", "diffusers' sliced attention"), ("diffusers_tiled", "diffusers' tiled decode"), ("sdpa", "torch SDPA")):
            dif = bid.replace("/kernel/", f"/{other}/")
            if dif in means:
                rows.append(("ratio", bid.replace("/kernel/", f"/kernel-vs-{other}/"), f"{means[dif] / ns:.2f}x faster than {label}"))
for log in ("bench-attention.log", "bench-vae.log"):
    text = read(log)
    for name, value in re.findall(r"^memory (\S+): (.+)$", text, re.M):
        rows.append(("bench", "peak-memory/" + name, value))
    for name, db in re.findall(r"^psnr (\S+): (.+)$", text, re.M):
        rows.append(("bench", "psnr-vs-untiled/" + name, db))
off = os.path.join(results, "offload.json")
if os.path.exists(off):
    o = json.load(open(off))
    rows.append(("bench", "offload/raw_h2d", f"{o['raw_h2d_gbs']:.1f} GB/s"))
    for s in o["streamer_gbs"]:
        rows.append(("bench", f"offload/streamer_h2d/k={s['prefetch']}", f"{s['gbs']:.1f} GB/s ({100 * s['gbs'] / o['raw_h2d_gbs']:.0f}% of raw)"))
    for r in o["rows"]:
        rows.append(("bench", f"offload/step/{r['mode']}", f"{r['seconds']:.3f} s, peak {r['peak_bytes'] / 1e9:.2f} GB (estimate {r['estimate_bytes'] / 1e9:.2f}), weights on GPU {r['weight_bytes_on_gpu'] / 1e9:.2f} GB {r['note']}"))
for cards_file, prefix in (("cards.json", "cards"), ("cards13b.json", "cards-13b-multiscale")):
    cards = os.path.join(results, cards_file)
    if not os.path.exists(cards):
        continue
    for r in json.load(open(cards))["rows"]:
        name = f"{prefix}/{r['card_gib']:.0f}GiB/{r['mode']}"
        if r["ok"]:
            peaks = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in r["peak_bytes_per_stage"].items())
            rows.append(("bench", name, f"{r['seconds']:.1f} s ({r['step_seconds']:.2f} s/step), peak GiB: {peaks}"))
        else:
            rows.append(("bench", name, f"failed: {r['error'][:120]}"))
counts = {}
for _, status, _, _ in steps:
    counts[status] = counts.get(status, 0) + 1
w = max([len(r[1]) for r in rows] + [10])
print(f"SUITE={suite.strip(',')}  steps: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
print(f"| kind  | {'name'.ljust(w)} | result")
print(f"|-------|-{'-' * w}-|-------")
for kind, name, result in rows:
    print(f"| {kind.ljust(5)} | {name.ljust(w)} | {result}")
PY
  mv "$results/SUMMARY.txt.new" "$results/SUMMARY.txt"
  publish
}

finish() {
  trap - EXIT INT TERM
  summarize
  echo
  cat "$results/SUMMARY.txt"
  echo "results: $results"
  if awk -F'\t' '$2 != "pass" && $2 != "skipped" { bad = 1 } END { exit !bad }' "$results/steps.tsv"; then
    exit 1
  fi
  exit "${early_status:-0}"
}
trap finish EXIT
trap 'echo "run.sh: interrupted" >&2; early_status=1; exit 1' INT TERM

# step NAME BUDGET_S CMD…: runs CMD with its output in $results/NAME.log, under `timeout`
# for min(BUDGET_S, what is left of the call's budget). Status: pass, skipped (exit 0 and the
# log says "skipped: no CUDA device"), fail (non-zero), timeout, or not-run (no time left).
step() {
  local name=$1 limit=$2
  shift 2
  local log="${name//\//_}.log"
  local left=$((budget - ($(date +%s) - start)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    printf '%s\tnot-run\t0\t%s\n' "$name" "$log" >>"$results/steps.tsv"
    return 1
  fi
  echo "== $name (≤ ${limit} s)"
  local t0 rc status
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$results/$log" 2>&1
  rc=$?
  case $rc in
    0) status=pass; grep -q "skipped: no CUDA device" "$results/$log" && status=skipped ;;
    124 | 137) status=timeout ;;
    *) status=fail ;;
  esac
  # A test binary that ran no test for the name passed nothing.
  if [ "$status" = pass ] && grep -q "^running 0 tests" "$results/$log"; then status=fail; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$log" >>"$results/steps.tsv"
  if [ "$status" != pass ] && [ "$status" != skipped ]; then
    { echo "=== $name: $status (exit $rc); last 60 lines of $log"; tail -n 60 "$results/$log"; echo; } >>"$results/failures.txt"
  fi
  echo "   $status"
  summarize
}

# --- environment ----------------------------------------------------------------------------
torch_dir=$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null) || {
  echo "run.sh: $py cannot import torch: install torch 2.11.0 (CUDA build) or set PYTHON" >&2
  early_status=2
  exit 2
}
site=$(dirname "$torch_dir")
libs="$torch_dir/lib"
for d in "$site"/nvidia/*/lib; do
  [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LTX_LIBTORCH_CUDA="$torch_dir/lib/libtorch_cuda.so"
export LTX_KERNEL_CACHE="$results/kernel-cache"
export CRITERION_HOME="$results/criterion"
if [ -z "${LTX_REQUIRE_CUDA:-}" ] && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  export LTX_REQUIRE_CUDA=1
fi
{
  echo "date: $(date -u +%FT%TZ)  host: $(uname -srm)"
  echo "SUITE=${SUITE:-smoke} RESULTS=$results LTX_RUN_BUDGET_S=$budget LTX_REQUIRE_CUDA=${LTX_REQUIRE_CUDA:-}"
  echo "--- nvidia-smi -L"; nvidia-smi -L 2>&1 || echo "(no nvidia-smi)"
  echo "--- torch"; "$py" -c 'import torch; print(torch.__version__, torch.__file__, "cuda", torch.version.cuda)' 2>&1
  echo "--- torch's nvidia/*/lib folders"; ls -d "$site"/nvidia/*/lib 2>&1
  echo "--- LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "--- libcuda / libnvrtc the loader knows (ldconfig)"; ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvrtc\.so' || echo "(none in the ldconfig cache)"
  echo "--- on LD_LIBRARY_PATH"; for d in ${LD_LIBRARY_PATH//:/ }; do ls "$d"/libcuda.so* "$d"/libnvrtc.so* 2>/dev/null; done
  echo "--- compute-sanitizer"; command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo "(not found)"
} >"$results/env.txt" 2>&1
cat "$results/env.txt"

# --- steps ----------------------------------------------------------------------------------
if want smoke || want tests || want offload || want cards || want cards13b; then
  step doctor 90 "$here/ltx-i2v" doctor
  if [ -f "$results/doctor.log" ]; then
    cp "$results/doctor.log" "$results/doctor.txt"
    cat "$results/doctor.txt"
  fi
fi

all_tests=$("$here/gpu-tests" --list 2>/dev/null | sed -n 's/: test$//p')
smoke_tests="libtorch_cuda_loads_and_torch_computes_on_the_device
allocator_stats_follow_an_allocation_and_empty_cache_returns_it
stream_guard_switches_and_restores_torchs_current_stream_and_events_order_streams
pinned_buffers_are_page_locked_exactly_sized_and_copy_asynchronously
tile_accumulate_kernel_matches_the_tch_reference
streamed_and_model_offloaded_forwards_equal_the_resident_forward_on_the_gpu"
is_kernel_test() { [[ "$1" == *kernel* || "$1" == *sliced* || "$1" == *tiled* ]]; }

run_test() {
  if is_kernel_test "$1"; then
    step "test/$1" 150 env CUDA_LAUNCH_BLOCKING=1 "$here/gpu-tests" --exact "$1" --nocapture --test-threads=1
  else
    step "test/$1" 150 "$here/gpu-tests" --exact "$1" --nocapture --test-threads=1
  fi
}

if want smoke; then
  for t in $smoke_tests; do
    if grep -qx "$t" <<<"$all_tests"; then run_test "$t"; else
      printf 'test/%s\tfail\t0\t(missing from gpu-tests --list)\n' "$t" >>"$results/steps.tsv"
    fi
  done
fi
if want tests; then
  for t in $all_tests; do
    want smoke && grep -qx "$t" <<<"$smoke_tests" && continue
    run_test "$t"
  done
fi
if want sanitize; then
  san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer "$site"/nvidia/*/bin/compute-sanitizer 2>/dev/null | head -n 1)
  if [ -z "$san" ]; then
    echo "skipped: compute-sanitizer not found (PATH, /usr/local/cuda/bin, torch's nvidia/*/bin)" >"$results/sanitize.log"
    printf 'sanitize\tskipped\t0\tsanitize.log\n' >>"$results/steps.tsv"
  else
    for t in $all_tests; do
      is_kernel_test "$t" || continue
      step "sanitize/$t" 240 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 CUDA_LAUNCH_BLOCKING=1 \
        "$san" --tool memcheck --error-exitcode 9 "$here/gpu-tests" --exact "$t" --test-threads=1
    done
  fi
fi
want kernels && step bench-kernels 150 "$here/bench-kernels" --bench
want attention && step bench-attention 300 "$here/bench-attention" --bench
# 41 frames keeps the run short; LTX_BENCH_VAE_FRAMES=121 for the full 768x512x121.
want vae && step bench-vae 300 env LTX_BENCH_VAE_FRAMES="${LTX_BENCH_VAE_FRAMES:-41}" "$here/bench-vae" --bench
# Memory modes on an LTX-2B-shaped transformer (28 blocks, D=2048, 6144 tokens, batch 2).
want offload && step bench-offload 240 "$here/ltx-i2v" bench offload --json "$results/offload.json"
# The whole pipeline on simulated 16/8 GiB cards (41 frames to keep it short).
want cards && step bench-cards 420 "$here/ltx-i2v" bench cards --frames "${CARDS_FRAMES:-41}" --json "$results/cards.json"
# The 0.9.7/0.9.8 multi-scale flow, 13B shapes, at the replaced service's default size.
want cards13b && step bench-cards-13b 420 "$here/ltx-i2v" bench cards --flow multiscale --cards 16 --modes sequential,model --json "$results/cards13b.json"
exit 0
