// Kernels of the frozen VAE decoder on the CPU (float32), for one sample at a time.
//
// Included by decoder_portable.cpp, decoder_avx2.cpp and decoder_avx512.cpp, each with its own
// DECODER_NS, DECODER_LANES (floats per vector: 16, 8, 4) and compile flags; the vectors are GCC
// vector extensions of that width, so the same code becomes zmm (AVX-512), ymm (AVX2 + FMA) or xmm
// (SSE, or the target's own vectors) instructions.
//
// Layouts (per sample): "NHWC" maps are [h][w][c] (c fastest), "NCHW" maps [c][h][w].
// 1. norm_relu_forward: instance norm (per channel over the image, biased variance, eps) then ReLU,
//    NHWC; returns the per-channel mean and 1/std for the backward.
// 2. norm_relu_backward: its gradient (NHWC), from the input x, the statistics and the output
//    gradient: with xhat = (x - mean) * rstd and g' = g where xhat > 0 (the ReLU), else 0,
//    dx = rstd * (g' - mean_hw(g') - xhat * mean_hw(g' * xhat)).
// 3. deconv1_forward: a transposed convolution, stride 2, no padding, C channels to 1, NHWC input
//    (optionally through the instance norm + ReLU of 1 on the way in, so that the normalised map of the
//    layer before it is never stored):
//    y[2i+kh][2j+kw] += sum_c w[c][kh][kw] x[i][j][c]. Computed per output row and column phase:
//    output column ow = 2q + p takes the taps kw = 2b + p from input column j = q - b, so each phase
//    row is a sum of shifted input rows, one output column per lane.
// 4. deconv1_backward: its input gradient, NHWC: dx[i][j][c] = sum_{kh,kw} w[c][kh][kw] g[2i+kh][2j+kw],
//    one channel per lane.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "decoder_kernels.hpp"

namespace latentinv {
namespace DECODER_NS {

constexpr int L = DECODER_LANES;
typedef float vec __attribute__((vector_size(4 * L)));

static inline vec vload(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
static inline void vstore(float* p, vec v) { std::memcpy(p, &v, sizeof v); }
static inline vec vsplat(float a) { return a - vec{}; }   // a broadcast (x - 0 is x, -0 included)
typedef int32_t ivec __attribute__((vector_size(4 * L)));

// Transpose of an L x L block held as L vectors (r[a][l] -> r[l][a]): log2(L) stages, stage D swapping
// the off-diagonal D x D sub-blocks of every 2D x 2D block with two-input shuffles (unrolled, so that
// the block stays in registers).
template <int D>
static inline void vtranspose_stage(vec* r) {
  ivec lo, hi;   // lanes of (r[a], r[a + D]) taken into the new r[a] and r[a + D]
#pragma GCC unroll 16
  for (int l = 0; l < L; ++l) {
    lo[l] = (l & D) ? L + l - D : l;
    hi[l] = (l & D) ? L + l : l + D;
  }
#pragma GCC unroll 16
  for (int a = 0; a < L; ++a) {
    if (a & D) continue;
    const vec ra = r[a], rb = r[a + D];
    r[a] = __builtin_shuffle(ra, rb, lo);
    r[a + D] = __builtin_shuffle(ra, rb, hi);
  }
  if constexpr (D > 1) vtranspose_stage<D / 2>(r);
}

static inline void vtranspose(vec* r) { vtranspose_stage<L / 2>(r); }

static inline vec vrelu(vec a) {
  const vec zero = {};
  return a > zero ? a : zero;
}

// ---- 1. instance norm + ReLU, forward -------------------------------------------------------------
// x: [hw][c], c % L == 0. Two-pass statistics (mean, then the centred sum of squares).
inline void norm_stats(const float* x, int64_t hw, int c, float eps, float* mean, float* rstd) {
  constexpr int CB = 8;   // up to 8 vectors of channels per pass over the image
  for (int c0 = 0; c0 < c; c0 += CB * L) {
    const int nv = std::min(CB, (c - c0) / L);
    vec s[CB] = {};
    for (int64_t i = 0; i < hw; ++i)
      for (int v = 0; v < nv; ++v) s[v] += vload(x + i * c + c0 + v * L);
    vec m[CB], q[CB] = {};
    for (int v = 0; v < nv; ++v) m[v] = s[v] / vsplat(static_cast<float>(hw));
    for (int64_t i = 0; i < hw; ++i)
      for (int v = 0; v < nv; ++v) {
        const vec d = vload(x + i * c + c0 + v * L) - m[v];
        q[v] += d * d;
      }
    for (int v = 0; v < nv; ++v)
      for (int l = 0; l < L; ++l) {
        mean[c0 + v * L + l] = m[v][l];
        rstd[c0 + v * L + l] = 1.0f / std::sqrt(q[v][l] / static_cast<float>(hw) + eps);
      }
  }
}

inline void norm_relu_forward(const float* x, int64_t hw, int c, float eps, float* y, float* mean,
                              float* rstd) {
  norm_stats(x, hw, c, eps, mean, rstd);
  for (int64_t i = 0; i < hw; ++i)
    for (int c0 = 0; c0 < c; c0 += L)
      vstore(y + i * c + c0, vrelu((vload(x + i * c + c0) - vload(mean + c0)) * vload(rstd + c0)));
}

// ---- 2. instance norm + ReLU, backward ------------------------------------------------------------
// x, g, dx: [hw][c] (g may alias dx).
inline void norm_relu_backward(const float* x, const float* g, const float* mean, const float* rstd,
                               int64_t hw, int c, float* dx) {
  constexpr int CB = 8;
  const vec zero = {};
  for (int c0 = 0; c0 < c; c0 += CB * L) {
    const int nv = std::min(CB, (c - c0) / L);
    vec m[CB], r[CB], s1[CB] = {}, s2[CB] = {};
    for (int v = 0; v < nv; ++v) {
      m[v] = vload(mean + c0 + v * L);
      r[v] = vload(rstd + c0 + v * L);
    }
    for (int64_t i = 0; i < hw; ++i)
      for (int v = 0; v < nv; ++v) {
        const int64_t k = i * c + c0 + v * L;
        const vec xh = (vload(x + k) - m[v]) * r[v];
        const vec gm = xh > zero ? vload(g + k) : zero;
        s1[v] += gm;
        s2[v] += gm * xh;
      }
    const vec inv = vsplat(1.0f / static_cast<float>(hw));
    for (int v = 0; v < nv; ++v) {
      s1[v] *= inv;
      s2[v] *= inv;
    }
    for (int64_t i = 0; i < hw; ++i)
      for (int v = 0; v < nv; ++v) {
        const int64_t k = i * c + c0 + v * L;
        const vec xh = (vload(x + k) - m[v]) * r[v];
        const vec gm = xh > zero ? vload(g + k) : zero;
        vstore(dx + k, r[v] * (gm - s1[v] - xh * s2[v]));
      }
  }
}

// ---- 3. transposed convolution to one channel, forward --------------------------------------------
// L padded input planes: row i of plane cc at scratch + (cc * h + i) * rw, rw = (NE + 1) * L, one
// vector of zeros then the image row (zeros after it). Each row is loaded once per tap row as NE
// aligned vectors; the copy shifted right by b columns is one two-vector shuffle of neighbours (an
// unaligned load per shift would cross a cache line almost every time). acc_e / acc_o: [oh][NE * L]
// phase accumulators (even / odd output columns; NE, NO vectors per phase row).
template <int NE, int NO>
void deconv1_rows(const float* scratch, int h, int rw, const float* w, int k, int oh, float* acc_e,
                  float* acc_o) {
  const int be = (k + 1) / 2, bo = k / 2;   // taps kw = 2b (even columns), 2b + 1 (odd columns)
  ivec shift[kDeconv1MaxKernel / 2];        // lanes of (v[q - 1], v[q]) making columns q L - b ...
  for (int b = 0; b < be; ++b)
    for (int l = 0; l < L; ++l) shift[b][l] = L + l - b;
  for (int orow = 0; orow < oh; ++orow) {
    float* pe = acc_e + static_cast<int64_t>(orow) * NE * L;
    float* po = acc_o + static_cast<int64_t>(orow) * NE * L;
    vec ae[NE], ao[NO];
    for (int q = 0; q < NE; ++q) ae[q] = vload(pe + q * L);
    for (int q = 0; q < NO; ++q) ao[q] = vload(po + q * L);
    for (int kh = orow & 1; kh < k; kh += 2) {
      const int i = (orow - kh) / 2;
      if (i < 0 || i >= h) continue;
      for (int cc = 0; cc < L; ++cc) {
        const float* row = scratch + (static_cast<int64_t>(cc) * h + i) * rw + L;
        const float* wk = w + (static_cast<int64_t>(cc) * k + kh) * k;
        vec v[NE + 1];
        v[0] = vec{};
        for (int q = 0; q < NE; ++q) v[q + 1] = vload(row + q * L);
        for (int b = 0; b < be; ++b) {
          const vec we = vsplat(wk[2 * b]);
          const vec wo = vsplat(b < bo ? wk[2 * b + 1] : 0.0f);
          for (int q = 0; q < NE; ++q) {
            const vec xv = b == 0 ? v[q + 1] : __builtin_shuffle(v[q], v[q + 1], shift[b]);
            ae[q] += we * xv;
            if (q < NO && b < bo) ao[q] += wo * xv;
          }
        }
      }
    }
    for (int q = 0; q < NE; ++q) vstore(pe + q * L, ae[q]);
    for (int q = 0; q < NO; ++q) vstore(po + q * L, ao[q]);
  }
}

// x: [h][w][c] (c a multiple of L); w: [c][k][k]; y: [oh][ow]. With mean and rstd (per channel), the
// input is relu((x - mean) * rstd) (the instance norm + ReLU before the layer, applied on the way into
// the planes and never stored). scratch: L * h * (NE + 1) * L floats, 64-byte aligned and zeroed by the
// caller before its first use (only the image's columns are rewritten, so the padding stays zero);
// acc: 2 * oh * NE * L floats.
template <int NE, int NO>
void deconv1_forward_t(const float* x, int c, int h, int wd, const float* w, int k, int oh, int ow,
                       const float* mean, const float* rstd, float* y, float* scratch, float* acc) {
  const int rw = (NE + 1) * L;
  float* acc_e = acc;
  float* acc_o = acc + static_cast<int64_t>(oh) * NE * L;
  std::fill(acc, acc + 2 * static_cast<int64_t>(oh) * NE * L, 0.0f);
  for (int c0 = 0; c0 < c; c0 += L) {
    vec m = {}, r = vsplat(1.0f);
    if (mean != nullptr) {
      m = vload(mean + c0);
      r = vload(rstd + c0);
    }
    // L channels of L pixels at a time, transposed into their planes (the columns beyond the image
    // get the zero rows of the block)
    for (int i = 0; i < h; ++i)
      for (int j0 = 0; j0 < wd; j0 += L) {
        vec t[L];
        const int jn = std::min(L, wd - j0);
#pragma GCC unroll 16
        for (int a = 0; a < L; ++a) {
          if (a < jn) {
            const vec v = vload(x + (static_cast<int64_t>(i) * wd + j0 + a) * c + c0);
            t[a] = mean != nullptr ? vrelu((v - m) * r) : v;
          } else {
            t[a] = vec{};
          }
        }
        vtranspose(t);
#pragma GCC unroll 16
        for (int cc = 0; cc < L; ++cc) vstore(scratch + (static_cast<int64_t>(cc) * h + i) * rw + L + j0, t[cc]);
      }
    deconv1_rows<NE, NO>(scratch, h, rw, w + static_cast<int64_t>(c0) * k * k, k, oh, acc_e, acc_o);
  }
  // interleave the phases: output column 2q from acc_e, 2q + 1 from acc_o
  ivec first, second;
  for (int l = 0; l < L; ++l) {
    first[l] = l % 2 ? L + l / 2 : l / 2;
    second[l] = l % 2 ? L + L / 2 + l / 2 : L / 2 + l / 2;
  }
  float row[2 * NE * L];
  for (int orow = 0; orow < oh; ++orow) {
    for (int q = 0; q < NE; ++q) {
      const vec e = vload(acc_e + (static_cast<int64_t>(orow) * NE + q) * L);
      const vec o = vload(acc_o + (static_cast<int64_t>(orow) * NE + q) * L);
      vstore(row + 2 * q * L, __builtin_shuffle(e, o, first));
      vstore(row + 2 * q * L + L, __builtin_shuffle(e, o, second));
    }
    std::memcpy(y + static_cast<int64_t>(orow) * ow, row, sizeof(float) * ow);
  }
}

// ---- 4. its input gradient, NHWC ------------------------------------------------------------------
// g: [oh][ow]; wt: [k][k][c] (the weight with the channel last); dx: [h][wd][c]. CV vectors of
// channels (from channel c0) times JB columns per block.
template <int CV, int JB>
static inline void deconv1_backward_block(const float* g, int ow, const float* wt, int k, int c, int c0,
                                          int i, int j, float* dx, int wd) {
  vec a[JB][CV] = {};
  for (int kh = 0; kh < k; ++kh) {
    const float* grow = g + static_cast<int64_t>(2 * i + kh) * ow + 2 * j;
    for (int kw = 0; kw < k; ++kw) {
      const float* wv = wt + (static_cast<int64_t>(kh) * k + kw) * c + c0;
      vec wr[CV];
      for (int v = 0; v < CV; ++v) wr[v] = vload(wv + v * L);
      for (int jj = 0; jj < JB; ++jj) {
        const vec gs = vsplat(grow[2 * jj + kw]);
        for (int v = 0; v < CV; ++v) a[jj][v] += wr[v] * gs;
      }
    }
  }
  for (int jj = 0; jj < JB; ++jj)
    for (int v = 0; v < CV; ++v)
      vstore(dx + (static_cast<int64_t>(i) * wd + j + jj) * c + c0 + v * L, a[jj][v]);
}

template <int CV>
void deconv1_backward_t(const float* g, int ow, const float* wt, int k, int c, int h, int wd, float* dx) {
  constexpr int JB = CV >= 8 ? 1 : 8 / CV;
  for (int i = 0; i < h; ++i)
    for (int c0 = 0; c0 < c; c0 += CV * L) {
      int j = 0;
      for (; j + JB <= wd; j += JB) deconv1_backward_block<CV, JB>(g, ow, wt, k, c, c0, i, j, dx, wd);
      for (; j < wd; ++j) deconv1_backward_block<CV, 1>(g, ow, wt, k, c, c0, i, j, dx, wd);
    }
}

}  // namespace DECODER_NS
}  // namespace latentinv

// ---- the table of this translation unit's kernels --------------------------------------------------

namespace latentinv {
namespace DECODER_NS {

// Vectors per phase row, in blocks of 16 columns (deconv1_phase_vectors: 1 to 4 of those): the even
// phase has ceil(ow / 2) columns, the odd one ow / 2, which may need one block fewer (the paper's 65
// columns: 33 and 32).
template <int BE>
inline void deconv1_forward_blocks(const float* x, int c, int h, int wd, const float* w, int k, int oh, int ow,
                                   const float* mean, const float* rstd, float* y, float* scratch, float* acc) {
  constexpr int V = 16 / L;
  if (BE > 1 && (ow / 2 + 15) / 16 < BE)
    return deconv1_forward_t<BE * V, (BE > 1 ? BE - 1 : 1) * V>(x, c, h, wd, w, k, oh, ow, mean, rstd, y,
                                                                 scratch, acc);
  return deconv1_forward_t<BE * V, BE * V>(x, c, h, wd, w, k, oh, ow, mean, rstd, y, scratch, acc);
}

inline void deconv1_forward(const float* x, int c, int h, int wd, const float* w, int k, int oh, int ow,
                            const float* mean, const float* rstd, float* y, float* scratch, float* acc) {
  switch (deconv1_phase_vectors(ow)) {
    case 1: return deconv1_forward_blocks<1>(x, c, h, wd, w, k, oh, ow, mean, rstd, y, scratch, acc);
    case 2: return deconv1_forward_blocks<2>(x, c, h, wd, w, k, oh, ow, mean, rstd, y, scratch, acc);
    case 3: return deconv1_forward_blocks<3>(x, c, h, wd, w, k, oh, ow, mean, rstd, y, scratch, acc);
    default: return deconv1_forward_blocks<4>(x, c, h, wd, w, k, oh, ow, mean, rstd, y, scratch, acc);
  }
}

// Channel vectors per block: the largest power of two up to 8 (AVX-512's 32 registers) or 4 (16
// registers) that divides the channel vectors.
inline void deconv1_backward(const float* g, int oh, int ow, const float* wt, int k, int c, int h, int wd,
                             float* dx) {
  (void)oh;
  const int nv = c / L, most = L >= 16 ? 8 : 4;
  const int cv = nv % 8 == 0 && most >= 8 ? 8 : nv % 4 == 0 ? 4 : nv % 2 == 0 ? 2 : 1;
  switch (cv) {
    case 8: return deconv1_backward_t<8>(g, ow, wt, k, c, h, wd, dx);
    case 4: return deconv1_backward_t<4>(g, ow, wt, k, c, h, wd, dx);
    case 2: return deconv1_backward_t<2>(g, ow, wt, k, c, h, wd, dx);
    default: return deconv1_backward_t<1>(g, ow, wt, k, c, h, wd, dx);
  }
}

inline DecoderKernels table(const char* name) {
  return DecoderKernels{name, norm_stats, norm_relu_forward, norm_relu_backward, deconv1_forward, deconv1_backward};
}

}  // namespace DECODER_NS
}  // namespace latentinv
