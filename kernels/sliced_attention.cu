// Sliced (flash-style) attention: O = softmax(Q·Kᵀ·scale + mask)·V without materialising the
// Sq×Sk score matrix. Queries in tiles of 64 (16 per warp, 4 warps), keys/values streamed
// through shared memory in slices of 64 with an online softmax in float32; the two matrix
// products run on tensor cores with `mma.sync.m16n8k16` (bf16 or fp16 in, fp32 accumulate).
// Written with inline PTX and no headers so NVRTC compiles it alone (see abi.h).
//
// Fragment layouts of mma.m16n8k16 (lane = 4·g + t):
//   A 16×16 row-major, 4 regs of 2 halves: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..),
//     a3 (g+8, 2t+8..)
//   B 16×8 "col": 2 regs: b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8.., n = g)
//   C 16×8 fp32: c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
// The C layout of S = Q·Kᵀ over 16 keys is exactly the A layout of P for P·V, so P never
// leaves registers.
#include "abi.h"

#define LTX_WARPS 4
#define LTX_BQ (16 * LTX_WARPS)
#define LTX_BK 64
#define LTX_NEG_INF (-__int_as_float(0x7f800000))

typedef unsigned short u16;
typedef unsigned int u32;

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __int_as_float(((u32)h) << 16); }

__device__ __forceinline__ float f16_to_f32(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

template <bool BF16>
__device__ __forceinline__ float to_f32(u16 h) {
  return BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

// Packs (lo, hi) into one register of two halves, lo in the low 16 bits.
template <bool BF16>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
  u32 r;
  if (BF16) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float *c, const u32 *a, const u32 *b) {
  if (BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

template <int D, bool BF16>
__device__ void sliced_attention(const ltx_attention_params &p) {
  static_assert(D % 16 == 0, "head dim must be a multiple of 16");
  // K and V slices; rows padded by 8 halves so column reads by different rows avoid
  // bank conflicts.
  __shared__ __align__(16) u16 ks[LTX_BK][D + 8];
  __shared__ __align__(16) u16 vs[LTX_BK][D + 8];

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const long long bh = blockIdx.y;
  const long long b = bh / p.heads;
  const long long h = bh % p.heads;
  const long long q0 = (long long)blockIdx.x * LTX_BQ + warp * 16;

  const u16 *q = (const u16 *)p.q + b * p.q_stride_b + h * p.q_stride_h;
  const u16 *k = (const u16 *)p.k + b * p.k_stride_b + h * p.k_stride_h;
  const u16 *v = (const u16 *)p.v + b * p.v_stride_b + h * p.v_stride_h;
  const float *mask = p.mask ? p.mask + b * p.mask_stride_b : 0;

  // This warp's 16 query rows as A fragments, all of D (rows past the end read as zero).
  u32 qa[D / 16][4];
  const long long r0 = q0 + g, r1 = q0 + g + 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int c0 = kk * 16 + 2 * t;
    qa[kk][0] = r0 < p.sq ? *(const u32 *)(q + r0 * p.q_stride_s + c0) : 0u;
    qa[kk][1] = r1 < p.sq ? *(const u32 *)(q + r1 * p.q_stride_s + c0) : 0u;
    qa[kk][2] = r0 < p.sq ? *(const u32 *)(q + r0 * p.q_stride_s + c0 + 8) : 0u;
    qa[kk][3] = r1 < p.sq ? *(const u32 *)(q + r1 * p.q_stride_s + c0 + 8) : 0u;
  }

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m0 = LTX_NEG_INF, m1 = LTX_NEG_INF;  // running max of rows g and g+8 (log2 units)
  float l0 = 0.f, l1 = 0.f;                  // running sums
  const float log2e = 1.4426950408889634f;
  const float sl = p.scale * log2e;

  for (long long k0 = 0; k0 < p.sk; k0 += LTX_BK) {
    __syncthreads();  // the previous slice is no longer read
    // Load the K and V slices, two halves per thread and step.
    for (int i = threadIdx.x; i < LTX_BK * D / 2; i += 32 * LTX_WARPS) {
      const int row = i / (D / 2);
      const int col = (i % (D / 2)) * 2;
      const long long key = k0 + row;
      u32 kv = 0u, vv = 0u;
      if (key < p.sk) {
        kv = *(const u32 *)(k + key * p.k_stride_s + col);
        vv = *(const u32 *)(v + key * p.v_stride_s + col);
      }
      *(u32 *)&ks[row][col] = kv;
      *(u32 *)&vs[row][col] = vv;
    }
    __syncthreads();

    // S = Q·Kᵀ for 64 keys: 8 tiles of 8 keys.
    float s[LTX_BK / 8][4];
#pragma unroll
    for (int n = 0; n < LTX_BK / 8; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        u32 bfrag[2];
        bfrag[0] = *(const u32 *)&ks[n * 8 + g][kk * 16 + 2 * t];
        bfrag[1] = *(const u32 *)&ks[n * 8 + g][kk * 16 + 2 * t + 8];
        mma16816<BF16>(s[n], qa[kk], bfrag);
      }
    }

    // Scale, mask, and the slice's row maxima.
    float mx0 = LTX_NEG_INF, mx1 = LTX_NEG_INF;
#pragma unroll
    for (int n = 0; n < LTX_BK / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const long long key = k0 + n * 8 + 2 * t + e;
        float add = 0.f;
        if (key >= p.sk) {
          add = LTX_NEG_INF;
        } else if (mask) {
          add = mask[key] * log2e;
        }
        s[n][e] = s[n][e] * sl + add;
        s[n][2 + e] = s[n][2 + e] * sl + add;
        mx0 = fmaxf(mx0, s[n][e]);
        mx1 = fmaxf(mx1, s[n][2 + e]);
      }
    }
#pragma unroll
    for (int off = 1; off < 4; off *= 2) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float nm0 = fmaxf(m0, mx0), nm1 = fmaxf(m1, mx1);
    // A row with no finite score yet keeps a zero base (no inf − inf).
    const float base0 = nm0 == LTX_NEG_INF ? 0.f : nm0;
    const float base1 = nm1 == LTX_NEG_INF ? 0.f : nm1;
    const float alpha0 = exp2f(m0 - base0), alpha1 = exp2f(m1 - base1);
    m0 = nm0;
    m1 = nm1;

    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int n = 0; n < LTX_BK / 8; ++n) {
      s[n][0] = exp2f(s[n][0] - base0);
      s[n][1] = exp2f(s[n][1] - base0);
      s[n][2] = exp2f(s[n][2] - base1);
      s[n][3] = exp2f(s[n][3] - base1);
      sum0 += s[n][0] + s[n][1];
      sum1 += s[n][2] + s[n][3];
    }
    l0 = l0 * alpha0 + sum0;  // per-thread partial sums; reduced across the quad at the end
    l1 = l1 * alpha1 + sum1;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][0] *= alpha0;
      o[j][1] *= alpha0;
      o[j][2] *= alpha1;
      o[j][3] *= alpha1;
    }

    // O += P·V: P's C fragments become A fragments, 16 keys per step.
#pragma unroll
    for (int kk = 0; kk < LTX_BK / 16; ++kk) {
      u32 pa[4];
      pa[0] = pack2<BF16>(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = pack2<BF16>(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = pack2<BF16>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = pack2<BF16>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        const int col = j * 8 + g;
        const int key = kk * 16 + 2 * t;
        u32 bfrag[2];
        bfrag[0] = (u32)vs[key][col] | ((u32)vs[key + 1][col] << 16);
        bfrag[1] = (u32)vs[key + 8][col] | ((u32)vs[key + 9][col] << 16);
        mma16816<BF16>(o[j], pa, bfrag);
      }
    }
  }

  // Normalise (the quad's four partial sums make the row's sum) and store.
#pragma unroll
  for (int off = 1; off < 4; off *= 2) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
  const float inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  u16 *out = (u16 *)p.out + b * p.out_stride_b + h * p.out_stride_h;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    const int col = j * 8 + 2 * t;
    if (r0 < p.sq) *(u32 *)(out + r0 * p.out_stride_s + col) = pack2<BF16>(o[j][0] * inv0, o[j][1] * inv0);
    if (r1 < p.sq) *(u32 *)(out + r1 * p.out_stride_s + col) = pack2<BF16>(o[j][2] * inv1, o[j][3] * inv1);
  }
}

extern "C" __global__ void __launch_bounds__(32 * LTX_WARPS)
    sliced_attention_bf16_d64(ltx_attention_params p) {
  sliced_attention<64, true>(p);
}
extern "C" __global__ void __launch_bounds__(32 * LTX_WARPS)
    sliced_attention_bf16_d128(ltx_attention_params p) {
  sliced_attention<128, true>(p);
}
extern "C" __global__ void __launch_bounds__(32 * LTX_WARPS)
    sliced_attention_f16_d64(ltx_attention_params p) {
  sliced_attention<64, false>(p);
}
extern "C" __global__ void __launch_bounds__(32 * LTX_WARPS)
    sliced_attention_f16_d128(ltx_attention_params p) {
  sliced_attention<128, false>(p);
}
