#!/usr/bin/env bash
# Runs the GPU suite on a GPU host: the libraries come from the host's torch install (python3
# must import torch 2.11.0+cu130). Prints a summary table; exits non-zero if a test failed.
# Results (logs, criterion data) go to $RESULTS (default: ./results next to this script).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
results=${RESULTS:-$here/results}
mkdir -p "$results"

torch_dir=$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))') || {
  echo "run.sh: $py cannot import torch: install torch 2.11.0 (CUDA build) or set PYTHON" >&2
  exit 2
}
site=$(dirname "$torch_dir")
libs="$torch_dir/lib"
for d in "$site"/nvidia/*/lib "$site"/nvidia/cu13/lib; do
  [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LTX_LIBTORCH_CUDA="$torch_dir/lib/libtorch_cuda.so"
export LTX_KERNEL_CACHE="$results/kernel-cache"
export CRITERION_HOME="$results/criterion"
echo "torch: $torch_dir ($("$py" -c 'import torch; print(torch.__version__)'))"

# SUITE picks the parts (comma-separated; default all): tests, kernels, attention, vae, offload,
# cards. Split a long run into two calls, e.g. SUITE=tests,kernels,attention,vae then
# SUITE=offload,cards (the summary covers whatever results/ holds).
suite=",${SUITE:-tests,kernels,attention,vae,offload,cards},"
want() { [[ "$suite" == *",$1,"* ]]; }

status=0
"$here/ltx-i2v" doctor >"$results/doctor.txt" 2>&1 || status=1
cat "$results/doctor.txt"
if want tests; then
  "$here/gpu-tests" --test-threads=1 >"$results/tests.txt" 2>"$results/tests.stderr.txt" || status=1
fi
want kernels && { "$here/bench-kernels" --bench >"$results/bench.txt" 2>&1 || status=1; }
want attention && { "$here/bench-attention" --bench >"$results/bench-attention.txt" 2>&1 || status=1; }
# 41 frames keeps the run short; LTX_BENCH_VAE_FRAMES=121 for the full 768x512x121.
if want vae; then
  LTX_BENCH_VAE_FRAMES=${LTX_BENCH_VAE_FRAMES:-41} "$here/bench-vae" --bench >"$results/bench-vae.txt" 2>&1 || status=1
fi
# Memory modes on an LTX-2B-shaped transformer (28 blocks, D=2048, 6144 tokens, batch 2).
if want offload; then
  "$here/ltx-i2v" bench offload --json "$results/offload.json" >"$results/offload.txt" 2>&1 || status=1
  cat "$results/offload.txt"
fi
# The whole pipeline on simulated 16/8 GiB cards (41 frames to keep it short).
if want cards; then
  "$here/ltx-i2v" bench cards --frames "${CARDS_FRAMES:-41}" --json "$results/cards.json" >"$results/cards.txt" 2>&1 || status=1
  cat "$results/cards.txt"
fi

"$py" - "$results" <<'PY'
import json, os, re, sys
results = sys.argv[1]
rows = []
def read(name):
    path = os.path.join(results, name)
    return open(path).read() if os.path.exists(path) else ""
tests = read("tests.txt")
stderr = read("tests.stderr.txt")
skipped = "skipped: no CUDA device" in stderr
for name, outcome in re.findall(r"^test (\S+) \.\.\. (\w+)", tests, re.M):
    rows.append(("test", name, "skipped (no CUDA device)" if skipped and outcome == "ok" else outcome))
if tests and not re.search(r"^test result:", tests, re.M):
    rows.append(("test", "gpu-tests", "CRASHED: see tests.stderr.txt"))
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
            rows.append(("bench", bid.replace("/kernel/", "/kernel-vs-tch/"), f"{means[ref] / ns:.2f}x faster than tch"))
        for other, label in (("diffusers_sliced", "diffusers' sliced attention"), ("diffusers_tiled", "diffusers' tiled decode")):
            dif = bid.replace("/kernel/", f"/{other}/")
            if dif in means:
                rows.append(("bench", bid.replace("/kernel/", f"/kernel-vs-{other}/"), f"{means[dif] / ns:.2f}x faster than {label}"))
for log in ("bench-attention.txt", "bench-vae.txt"):
    path = os.path.join(results, log)
    if os.path.exists(path):
        text = open(path).read()
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
elif read("offload.txt"):
    log = read("offload.txt")
    rows.append(("bench", "offload", "skipped (no CUDA device)" if "skipped: no CUDA device" in log else "NO RESULTS: see offload.txt"))
cards = os.path.join(results, "cards.json")
if os.path.exists(cards):
    for r in json.load(open(cards))["rows"]:
        name = f"cards/{r['card_gib']:.0f}GiB/{r['mode']}"
        if r["ok"]:
            peaks = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in r["peak_bytes_per_stage"].items())
            rows.append(("bench", name, f"{r['seconds']:.1f} s ({r['step_seconds']:.2f} s/step), peak GiB: {peaks}"))
        else:
            rows.append(("bench", name, f"failed: {r['error'][:120]}"))
elif read("cards.txt"):
    log = read("cards.txt")
    rows.append(("bench", "cards", "skipped (no CUDA device)" if "skipped: no CUDA device" in log else "NO RESULTS: see cards.txt"))
if not means:
    for log, name in (("bench.txt", "kernels"), ("bench-attention.txt", "attention"), ("bench-vae.txt", "vae_decode")):
        text = read(log)
        if text:
            rows.append(("bench", name, "skipped (no CUDA device)" if "skipped: no CUDA device" in text else f"NO RESULTS: see {log}"))
w = max(len(r[1]) for r in rows) if rows else 10
print()
print(f"| kind  | {'name'.ljust(w)} | result")
print(f"|-------|-{'-' * w}-|-------")
for kind, name, result in rows:
    print(f"| {kind.ljust(5)} | {name.ljust(w)} | {result}")
PY
exit $status
