#!/usr/bin/env bash
# Builds the GPU suite here (no GPU needed) into a self-contained folder to copy to a GPU host:
#   gpu-bundle/{ltx-i2v, gpu-tests, bench-kernels, bench-attention, bench-vae, run.sh}
# On the GPU host (torch 2.11.0+cu130 for python3; no Rust, no network): `gpu-bundle/run.sh`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/gpu-bundle}
limit_mb=60
cd "$root"
scripts/setup.sh

# Prints the executable cargo built for the target named $1 (from cargo's JSON messages).
executable() {
  python3 -c '
import json, sys
want = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == want and m.get("executable"):
        print(m["executable"])
' "$1"
}

cargo build --release --bin ltx-i2v
main=$(cargo build --release --bin ltx-i2v --message-format=json | executable ltx-i2v)
tests=$(cargo test --release --test gpu --no-run --message-format=json | executable gpu)
bench=$(cargo bench --bench kernels --no-run --message-format=json | executable kernels)
attn=$(cargo bench --bench attention --no-run --message-format=json | executable attention)
vae=$(cargo bench --bench vae_decode --no-run --message-format=json | executable vae_decode)
[ -n "$main" ] && [ -n "$tests" ] && [ -n "$bench" ] && [ -n "$attn" ] && [ -n "$vae" ] || { echo "gpu-bundle: cargo did not report every executable" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"
cp "$main" "$out/ltx-i2v"
cp "$tests" "$out/gpu-tests"
cp "$bench" "$out/bench-kernels"
cp "$attn" "$out/bench-attention"
cp "$vae" "$out/bench-vae"
strip "$out/ltx-i2v" "$out/gpu-tests" "$out/bench-kernels" "$out/bench-attention" "$out/bench-vae"
cp scripts/gpu-runner.sh "$out/run.sh"
chmod +x "$out/run.sh"

size_mb=$(du -sm "$out" | cut -f1)
echo "gpu-bundle: $out (${size_mb} MB)"
ls -l "$out"
if [ "$size_mb" -ge "$limit_mb" ]; then
  echo "gpu-bundle: ${size_mb} MB is over the ${limit_mb} MB limit" >&2
  exit 1
fi
