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
// 3. deconv1_forward: a transposed convolution, stride 2, no padding, C channels to 1, NHWC input:
//    y[2i+kh][2j+kw] += sum_c w[c][kh][kw] x[c][i][j]. Computed per output row and column phase:
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
typedef float v16 __attribute__((vector_size(4 * L)));

static inline v16 vload(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
static inline void vstore(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
static inline v16 vsplat(float a) { return v16{} + a; }
static inline v16 vrelu(v16 a) {
  const v16 zero = {};
  return a > zero ? a : zero;
}

// ---- 1. instance norm + ReLU, forward -------------------------------------------------------------
// x: [hw][c], c % 16 == 0. Two-pass statistics (mean, then the centred sum of squares).
inline void norm_relu_forward(const float* x, int64_t hw, int c, float eps, float* y, float* mean,
                              float* rstd) {
  constexpr int CB = 8;   // up to 8 vectors (128 channels) per pass over the image
  for (int c0 = 0; c0 < c; c0 += CB * L) {
    const int nv = std::min(CB, (c - c0) / L);
    v16 s[CB] = {};
    for (int64_t i = 0; i < hw; ++i)
      for (int v = 0; v < nv; ++v) s[v] += vload(x + i * c + c0 + v * L);
    v16 m[CB], q[CB] = {};
    for (int v = 0; v < nv; ++v) m[v] = s[v] / vsplat(static_cast<float>(hw));
    for (int64_t i = 0; i < hw; ++i)
      for (int v = 0; v < nv; ++v) {
        const v16 d = vload(x + i * c + c0 + v * L) - m[v];
        q[v] += d * d;
      }
    for (int v = 0; v < nv; ++v)
      for (int l = 0; l < L; ++l) {
        mean[c0 + v * L + l] = m[v][l];
        rstd[c0 + v * L + l] = 1.0f / std::sqrt(q[v][l] / static_cast<float>(hw) + eps);
      }
  }
  for (int64_t i = 0; i < hw; ++i)
    for (int c0 = 0; c0 < c; c0 += L)
      vstore(y + i * c + c0, vrelu((vload(x + i * c + c0) - vload(mean + c0)) * vload(rstd + c0)));
}

// ---- 2. instance norm + ReLU, backward ------------------------------------------------------------
// x, g, dx: [hw][c] (g may alias dx).
inline void norm_relu_backward(const float* x, const float* g, const float* mean, const float* rstd,
                               int64_t hw, int c, float* dx) {
  constexpr int CB = 8;
  const v16 zero = {};
  for (int c0 = 0; c0 < c; c0 += CB * L) {
    const int nv = std::min(CB, (c - c0) / L);
    v16 m[CB], r[CB], s1[CB] = {}, s2[CB] = {};
    for (int v = 0; v < nv; ++v) {
      m[v] = vload(mean + c0 + v * L);
      r[v] = vload(rstd + c0 + v * L);
    }
    for (int64_t i = 0; i < hw; ++i)
      for (int v = 0; v < nv; ++v) {
        const int64_t k = i * c + c0 + v * L;
        const v16 xh = (vload(x + k) - m[v]) * r[v];
        const v16 gm = xh > zero ? vload(g + k) : zero;
        s1[v] += gm;
        s2[v] += gm * xh;
      }
    const v16 inv = vsplat(1.0f / static_cast<float>(hw));
    for (int v = 0; v < nv; ++v) {
      s1[v] *= inv;
      s2[v] *= inv;
    }
    for (int64_t i = 0; i < hw; ++i)
      for (int v = 0; v < nv; ++v) {
        const int64_t k = i * c + c0 + v * L;
        const v16 xh = (vload(x + k) - m[v]) * r[v];
        const v16 gm = xh > zero ? vload(g + k) : zero;
        vstore(dx + k, r[v] * (gm - s1[v] - xh * s2[v]));
      }
  }
}

// ---- 3. transposed convolution to one channel, forward --------------------------------------------
// Padded copies of CB input planes: row r of plane c at scratch + (c * h + r) * rw, the input row
// starting at column pad (= bmax - 1, the largest tap shift); zeros elsewhere.
// acc_e / acc_o: [oh][NQ * L] phase accumulators (even / odd output columns), zeroed by the caller.
template <int NQ>
void deconv1_rows(const float* scratch, int cb, int h, int rw, int pad, const float* w, int k, int oh,
                  int n_odd_taps, float* acc_e, float* acc_o) {
  const int be = (k + 1) / 2, bo = k / 2;   // taps kw = 2b (even columns), 2b + 1 (odd columns)
  for (int orow = 0; orow < oh; ++orow) {
    v16 ae[NQ], ao[NQ];
    for (int q = 0; q < NQ; ++q) {
      ae[q] = vload(acc_e + orow * NQ * L + q * L);
      ao[q] = vload(acc_o + orow * NQ * L + q * L);
    }
    for (int kh = orow & 1; kh < k; kh += 2) {
      const int i = (orow - kh) / 2;
      if (i < 0 || i >= h) continue;
      for (int c = 0; c < cb; ++c) {
        const float* row = scratch + (static_cast<int64_t>(c) * h + i) * rw + pad;
        const float* wk = w + (static_cast<int64_t>(c) * k + kh) * k;
        for (int b = 0; b < be; ++b) {
          const v16 we = vsplat(wk[2 * b]);
          const bool odd = b < bo;
          const v16 wo = vsplat(odd ? wk[2 * b + 1] : 0.0f);
          for (int q = 0; q < NQ; ++q) {
            const v16 xv = vload(row + q * L - b);
            ae[q] += we * xv;
            if (odd) ao[q] += wo * xv;
          }
        }
      }
    }
    for (int q = 0; q < NQ; ++q) {
      vstore(acc_e + orow * NQ * L + q * L, ae[q]);
      vstore(acc_o + orow * NQ * L + q * L, ao[q]);
    }
  }
  (void)n_odd_taps;
}

// x: [h][w][c]; w: [c][k][k]; y: [oh][ow]; scratch: 4 * h * rw floats, rw = NQ * L + (k + 1) / 2
// (NQ * L = 16 * deconv1_phase_vectors(ow)); acc: 2 * oh * NQ * L floats.
template <int NQ>
void deconv1_forward_t(const float* x, int c, int h, int wd, const float* w, int k, int oh, int ow,
                       float* y, float* scratch, float* acc) {
  const int pad = (k + 1) / 2 - 1;
  const int rw = NQ * L + pad + 1;
  constexpr int CB = 4;
  float* acc_e = acc;
  float* acc_o = acc + static_cast<int64_t>(oh) * NQ * L;
  std::fill(acc, acc + 2 * static_cast<int64_t>(oh) * NQ * L, 0.0f);
  std::fill(scratch, scratch + static_cast<int64_t>(CB) * h * rw, 0.0f);
  for (int c0 = 0; c0 < c; c0 += CB) {
    const int cb = std::min(CB, c - c0);
    for (int i = 0; i < h; ++i)      // channels c0.. of each pixel into their padded planes
      for (int j = 0; j < wd; ++j) {
        const float* px = x + (static_cast<int64_t>(i) * wd + j) * c + c0;
        for (int cc = 0; cc < cb; ++cc) scratch[(static_cast<int64_t>(cc) * h + i) * rw + pad + j] = px[cc];
      }
    deconv1_rows<NQ>(scratch, cb, h, rw, pad, w + static_cast<int64_t>(c0) * k * k, k, oh, k / 2, acc_e,
                     acc_o);
  }
  for (int orow = 0; orow < oh; ++orow)
    for (int col = 0; col < ow; ++col)
      y[static_cast<int64_t>(orow) * ow + col] =
          (col & 1 ? acc_o : acc_e)[static_cast<int64_t>(orow) * NQ * L + col / 2];
}

// ---- 4. its input gradient, NHWC ------------------------------------------------------------------
// g: [oh][ow]; wt: [k][k][c] (the weight with the channel last); dx: [h][wd][c]. CV vectors of
// channels (from channel c0) times JB columns per block.
template <int CV, int JB>
static inline void deconv1_backward_block(const float* g, int ow, const float* wt, int k, int c, int c0,
                                          int i, int j, float* dx, int wd) {
  v16 a[JB][CV] = {};
  for (int kh = 0; kh < k; ++kh) {
    const float* grow = g + static_cast<int64_t>(2 * i + kh) * ow + 2 * j;
    for (int kw = 0; kw < k; ++kw) {
      const float* wv = wt + (static_cast<int64_t>(kh) * k + kw) * c + c0;
      v16 wr[CV];
      for (int v = 0; v < CV; ++v) wr[v] = vload(wv + v * L);
      for (int jj = 0; jj < JB; ++jj) {
        const v16 gs = vsplat(grow[2 * jj + kw]);
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

// Vectors per phase row: 16 / L per 16 columns (deconv1_phase_vectors: 1 to 4 of those).
inline void deconv1_forward(const float* x, int c, int h, int wd, const float* w, int k, int oh, int ow,
                            float* y, float* scratch, float* acc) {
  constexpr int V = 16 / L;
  switch (deconv1_phase_vectors(ow)) {
    case 1: return deconv1_forward_t<1 * V>(x, c, h, wd, w, k, oh, ow, y, scratch, acc);
    case 2: return deconv1_forward_t<2 * V>(x, c, h, wd, w, k, oh, ow, y, scratch, acc);
    case 3: return deconv1_forward_t<3 * V>(x, c, h, wd, w, k, oh, ow, y, scratch, acc);
    default: return deconv1_forward_t<4 * V>(x, c, h, wd, w, k, oh, ow, y, scratch, acc);
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
  return DecoderKernels{name, norm_relu_forward, norm_relu_backward, deconv1_forward, deconv1_backward};
}

}  // namespace DECODER_NS
}  // namespace latentinv
