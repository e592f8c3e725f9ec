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
