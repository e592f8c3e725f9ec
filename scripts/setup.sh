#!/usr/bin/env bash
# Provisions what the build needs and nothing else: the CPU subset of libtorch 2.11.0, the CUDA
# headers and NVRTC, from wheels pinned by sha256 in scripts/libtorch.lock, into .libtorch/;
# and the ONNX Runtime library (scripts/onnxruntime.lock) into .onnxruntime/.
# Idempotent: a second run finds the stamps and does nothing. Set LIBTORCH to use your own
# libtorch instead, LTX_ONNXRUNTIME to use your own libonnxruntime.so.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
lock="$root/scripts/libtorch.lock"
dest="$root/.libtorch"
stamp="$dest/.complete"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# bindgen (crates/gpu) needs libclang at build time.
have_libclang() {
  [ -n "${LIBCLANG_PATH:-}" ] && return 0
  ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so' && return 0
  compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
    compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null
}
if ! have_libclang; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing libclang-dev (bindgen needs libclang)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
  else
    die "bindgen needs libclang: install it (Debian/Ubuntu: sudo apt-get install libclang-dev) or set LIBCLANG_PATH"
  fi
fi

# ONNX Runtime for the face crate: the C library of the pinned `onnxruntime` wheel, into
# .onnxruntime/ (stamped like .libtorch/). Nothing links it: ort dlopens it at run time, from
# LTX_ONNXRUNTIME when set, else from this folder. Runs in a subshell for its own clean-up trap.
provision_onnxruntime() (
  local ort_lock="$root/scripts/onnxruntime.lock" ort_dest="$root/.onnxruntime"
  if [ -n "${LTX_ONNXRUNTIME:-}" ]; then
    [ -f "$LTX_ONNXRUNTIME" ] || die "LTX_ONNXRUNTIME=$LTX_ONNXRUNTIME is not a file"
    say "LTX_ONNXRUNTIME=$LTX_ONNXRUNTIME is set: skipping the onnxruntime download"
    return 0
  fi
  local want
  want=$(sha256sum "$ort_lock" | cut -d' ' -f1)
  if [ -f "$ort_dest/.complete" ] && [ "$(cat "$ort_dest/.complete")" = "$want" ]; then
    say "onnxruntime ready in $ort_dest"
    return 0
  fi
  command -v python3 >/dev/null || die "python3 with pip is needed to download the pinned onnxruntime wheel"
  command -v unzip >/dev/null || die "unzip is needed to extract the onnxruntime wheel"
  local req sha version work
  read -r req sha < <(grep -v '^#' "$ort_lock" | awk 'NF==2')
  version=${req##*==}
  work=$(mktemp -d "${TMPDIR:-/tmp}/ltx-onnxruntime.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  say "downloading $req (about 28 MB)"
  echo "$req --hash=sha256:$sha" >"$work/requirements.txt"
  python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
    -r "$work/requirements.txt" -d "$work/wheels"
  local whl
  whl=$(ls "$work/wheels/onnxruntime-${version}-"*.whl 2>/dev/null | head -n1)
  [ -n "$whl" ] || die "pip did not deliver $req"
  [ "$(sha256sum "$whl" | cut -d' ' -f1)" = "$sha" ] || die "$whl: sha256 differs from the pin $sha"
  local lib="libonnxruntime.so.$version"
  unzip -q -j "$whl" "onnxruntime/capi/$lib" -d "$work/stage"
  [ -f "$work/stage/$lib" ] || die "extraction lost $lib"
  ln -s "$lib" "$work/stage/libonnxruntime.so"
  rm -rf "$ort_dest"
  mv "$work/stage" "$ort_dest"
  echo "$want" >"$ort_dest/.complete"
  say "onnxruntime $version ready in $ort_dest ($(du -sh "$ort_dest" | cut -f1))"
)
provision_onnxruntime

if [ -n "${LIBTORCH:-}" ] && [ "$(cd "$LIBTORCH" 2>/dev/null && pwd)" != "$dest" ]; then
  [ -d "$LIBTORCH/lib" ] && [ -d "$LIBTORCH/include" ] || die "LIBTORCH=$LIBTORCH has no lib/ and include/"
  say "LIBTORCH=$LIBTORCH is set: skipping the libtorch download"
  exit 0
fi

want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "libtorch ready in $dest"
  exit 0
fi

command -v python3 >/dev/null || die "python3 with pip is needed to download the pinned wheels"
command -v unzip >/dev/null || die "unzip is needed to extract the wheels"

work=$(mktemp -d "${TMPDIR:-/tmp}/ltx-libtorch.XXXXXX")
trap 'rm -rf "$work"' EXIT

reqs="$work/requirements.txt"
grep -v '^#' "$lock" | awk 'NF==2 {print $1 " --hash=sha256:" $2}' >"$reqs"

say "downloading the pinned wheels (about 0.6 GB)"
python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
  --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
  -r "$reqs" -d "$work/wheels"

# pip checked the hashes already; check again here so the pin does not depend on pip's behaviour.
grep -v '^#' "$lock" | awk 'NF==2' | while read -r req sha; do
  name=${req%%==*}; version=${req##*==}
  file=$(ls "$work/wheels/${name//-/_}-${version}-"*.whl 2>/dev/null | head -n1)
  [ -n "$file" ] || die "pip did not deliver $req"
  got=$(sha256sum "$file" | cut -d' ' -f1)
  [ "$got" = "$sha" ] || die "$file: sha256 $got, pinned $sha"
done

stage="$work/stage"
mkdir -p "$stage/lib" "$stage/include" "$stage/cuda/include"
x="$work/x"
for whl in "$work/wheels"/*.whl; do
  case "$(basename "$whl")" in
    torch-*)
      unzip -q "$whl" 'torch/include/*' 'torch/lib/libtorch_cpu.so' 'torch/lib/libtorch.so' \
        'torch/lib/libc10.so' 'torch/lib/libc10_cuda.so' 'torch/lib/libgomp.so.1' -d "$x"
      cp -a "$x/torch/include/." "$stage/include/"
      cp -a "$x/torch/lib/." "$stage/lib/"
      ;;
    nvidia_cuda_cupti-*)
      unzip -q "$whl" 'nvidia/cu13/lib/libcupti.so.13' -d "$x" ;;
    *)
      unzip -q -o "$whl" 'nvidia/cu13/include/*' 'nvidia/cu13/lib/libcudart.so.13' \
        'nvidia/cu13/lib/libnvrtc.so.13' 'nvidia/cu13/lib/libnvrtc-builtins.so.13.0' -d "$x" 2>/dev/null \
        || [ $? -eq 11 ]  # 11: some of the patterns are not in this wheel
      ;;
  esac
done
cp -a "$x/nvidia/cu13/include/." "$stage/cuda/include/"
cp -a "$x/nvidia/cu13/lib/." "$stage/lib/"
grep '^torch==' "$lock" | awk '{print $1}' | cut -d= -f3 >"$stage/build-version"

for f in libtorch_cpu.so libtorch.so libc10.so libc10_cuda.so libgomp.so.1 libcudart.so.13 \
  libcupti.so.13 libnvrtc.so.13 libnvrtc-builtins.so.13.0; do
  [ -f "$stage/lib/$f" ] || die "extraction lost lib/$f"
done
[ -f "$stage/include/torch/csrc/api/include/torch/torch.h" ] || die "extraction lost the torch headers"
[ -f "$stage/cuda/include/cuda_runtime_api.h" ] || die "extraction lost the CUDA headers"

rm -rf "$dest"
mv "$stage" "$dest"
echo "$want" >"$stamp"
say "libtorch $(cat "$dest/build-version") (CPU subset), CUDA headers and NVRTC ready in $dest ($(du -sh "$dest" | cut -f1))"
