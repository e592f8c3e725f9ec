/* Parameter structs shared by the CUDA kernels (kernels/*.cu) and Rust (bindgen, crates/gpu).
 * Plain C types only: NVRTC compiles this without any system header, and bindgen maps
 * `long long` to i64 and `int` to i32 on every supported target. A kernel takes its struct
 * by value as its only parameter, so both sides must agree on this layout exactly. */
#ifndef LTX_KERNELS_ABI_H
#define LTX_KERNELS_ABI_H

/* Weighted tile accumulation for tiled VAE decoding.
 *
 * A decoded tile `tile[c, tf, ty, tx]` (contiguous, float32) lands at offset (f0, y0, x0) of
 * the canvas `out[c, f, y, x]` (contiguous, float32, `channels` x out_f x out_h x out_w):
 *
 *   w          = wt[tf] * wy[ty] * wx[tx]          (separable feather weights)
 *   out[c,f,y,x] += w * tile[c,tf,ty,tx]           for every channel c
 *   wsum[f,y,x]  += w                              (once per pixel, not per channel)
 *
 * Tile pixels that fall outside the canvas are skipped. Tiles accumulate one launch at a time
 * on one stream, so a launch owns every pixel it touches and needs no atomics. */
typedef struct {
  float *out;
  float *wsum;
  const float *tile;
  const float *wt;
  const float *wy;
  const float *wx;
  long long channels;
  long long out_f;
  long long out_h;
  long long out_w;
  long long tile_f;
  long long tile_h;
  long long tile_w;
  long long f0;
  long long y0;
  long long x0;
} ltx_tile_accumulate_params;

/* The last pass of a weighted tiled decode, fused (kernels/tile_accumulate.cu,
 * tile_finalize_u8): normalise the canvas by the summed weights, map to [0, 1] with
 * `x * scale + offset`, clamp, scale by 255 and truncate (NaN → 0), and write uint8 frames
 * channel-last:
 *
 *   dst[f, y, x, c] = (u8) (clamp(out[c, f, y, x] / wsum[f, y, x] * scale + offset, 0, 1) * 255)
 *
 * out is float32 [channels, F, H, W], wsum float32 [F, H, W], dst uint8 [F, H, W, channels],
 * all contiguous. One thread per pixel. */
typedef struct {
  const float *out;
  const float *wsum;
  unsigned char *dst;
  long long channels;
  long long frames;
  long long height;
  long long width;
  float scale;
  float offset;
} ltx_tile_finalize_params;

/* Sliced (flash-style) attention, kernels/sliced_attention.cu:
 *
 *   out[b, h, i, :] = softmax_j(q[b, h, i, :] · k[b, h, j, :] · scale + mask[b, j]) · v[b, h, j, :]
 *
 * q, k, v, out hold bf16 or fp16 (the kernel's name says which) with the head dimension D
 * contiguous (stride 1) and every other stride given in elements, so the [B, S, H, D] layout
 * the models produce is read without a copy. mask is float32 [B, sk] with stride
 * mask_stride_b (or null): an additive key mask, as `[B, 1, 1, sk]` in torch. Launch: grid
 * (ceil(sq / 64), B·heads), 128 threads. */
typedef struct {
  const void *q;
  const void *k;
  const void *v;
  void *out;
  const float *mask;
  long long heads;
  long long sq;
  long long sk;
  long long q_stride_b;
  long long q_stride_h;
  long long q_stride_s;
  long long k_stride_b;
  long long k_stride_h;
  long long k_stride_s;
  long long v_stride_b;
  long long v_stride_h;
  long long v_stride_s;
  long long out_stride_b;
  long long out_stride_h;
  long long out_stride_s;
  long long mask_stride_b;
  float scale;
} ltx_attention_params;

#endif
