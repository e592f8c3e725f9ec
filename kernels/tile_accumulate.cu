// Feather-weighted accumulation of one decoded tile into the video canvas (see abi.h).
// One thread per tile pixel (tf, ty, tx); it loops over channels so the weight is computed
// once and wsum is written once.
#include "abi.h"

extern "C" __global__ void tile_accumulate_f32(ltx_tile_accumulate_params p) {
  const long long plane = p.tile_h * p.tile_w;
  const long long n = p.tile_f * plane;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;

  const long long tf = i / plane;
  const long long ty = (i % plane) / p.tile_w;
  const long long tx = i % p.tile_w;
  const long long f = p.f0 + tf;
  const long long y = p.y0 + ty;
  const long long x = p.x0 + tx;
  if (f < 0 || f >= p.out_f || y < 0 || y >= p.out_h || x < 0 || x >= p.out_w) return;

  const float w = p.wt[tf] * p.wy[ty] * p.wx[tx];
  const long long out_idx = (f * p.out_h + y) * p.out_w + x;
  const long long out_stride = p.out_f * p.out_h * p.out_w;
  const long long tile_stride = n;
  for (long long c = 0; c < p.channels; ++c) {
    p.out[c * out_stride + out_idx] += w * p.tile[c * tile_stride + i];
  }
  p.wsum[out_idx] += w;
}

// The fused last pass of a weighted tiled decode (see abi.h): normalise, scale/offset, clamp,
// ×255 truncated to uint8, channel-last. One thread per pixel, channel loop inside.
extern "C" __global__ void tile_finalize_u8(ltx_tile_finalize_params p) {
  const long long plane = p.height * p.width;
  const long long n = p.frames * plane;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float w = p.wsum[i];
  for (long long c = 0; c < p.channels; ++c) {
    // Each step rounded on its own (no fused multiply-add), like the tch ops it replaces, so
    // the bytes are the same.
    float v = __fadd_rn(__fmul_rn(__fdiv_rn(p.out[c * n + i], w), p.scale), p.offset);
    v = fminf(fmaxf(v, 0.0f), 1.0f);  // fmaxf(NaN, 0) = 0
    p.dst[i * p.channels + c] = (unsigned char)__fmul_rn(v, 255.0f);
  }
}
