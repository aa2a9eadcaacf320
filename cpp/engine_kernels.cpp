// The SGD engine's straight-ray kernels (engine_kernels.hpp). Each loop keeps torch's operation order;
// the compiler may vectorise across independent elements, never reassociate a sum (no -ffast-math, no
// contraction).
#include "engine_kernels.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "worker_pool.hpp"

namespace latentinv {

namespace {
constexpr bool kKeepDenormals = false;   // torch's element-wise operations do not flush them
}

void paper_slowness_forward(const float* x, int64_t n, float* s, int n_threads) {
  // torch: rsub (1 - x), mul by the scalar 0.02, add 0.06, reciprocal (then a multiply by 1.0, exact)
  pool::for_ranges(n, n_threads, kKeepDenormals, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      const float t1 = 1.0f - x[i];
      const float t2 = t1 * 0.02f;
      const float t3 = t2 + 0.06f;
      s[i] = 1.0f / t3;
    }
  });
}

void paper_slowness_backward(const float* g, const float* s, int64_t n, float* gx, int n_threads) {
  // torch's chain, its negations dropped (exact): reciprocal's -g (r r), then mul's 0.02, then rsub's -1
  pool::for_ranges(n, n_threads, kKeepDenormals, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      const float rr = s[i] * s[i];
      const float t = g[i] * rr;
      gx[i] = t * 0.02f;
    }
  });
}

namespace {

// row_start(r), then body(r, k, idx, val) for each requested ray k of row r in order (idx, val: the
// ray's padded kernel row), rows split over the workers
template <typename RowStart, typename Body>
void for_requested_rays(int64_t n_rows, int64_t batch, const int64_t* rays, const int64_t* index,
                        const float* value, int64_t width, int n_threads, RowStart&& row_start, Body&& body) {
  pool::for_ranges(n_rows, n_threads, kKeepDenormals, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) {
      row_start(r);
      for (int64_t k = 0; k < batch; ++k) {
        const int64_t ray = rays[r * batch + k];
        body(r, k, index + ray * width, value + ray * width);
      }
    }
  });
}

}  // namespace

void kernel_rows_forward(const float* s, int64_t n_rows, int64_t n_cells, const int64_t* index,
                         const float* value, int64_t n_rays, int64_t width, const int64_t* rays, int64_t batch,
                         float* out, int n_threads) {
  (void)n_rays;
  for_requested_rays(n_rows, batch, rays, index, value, width, n_threads, [](int64_t) {},
                     [&](int64_t r, int64_t k, const int64_t* idx, const float* val) {
                       const float* sr = s + r * n_cells;
                       float* o = out + (r * batch + k) * width;
                       for (int64_t p = 0; p < width; ++p) o[p] = sr[idx[p]] * val[p];
                     });
}

void kernel_rows_backward(const float* g, int64_t n_rows, int64_t n_cells, const int64_t* index,
                          const float* value, int64_t n_rays, int64_t width, const int64_t* rays, int64_t batch,
                          float* gs, int n_threads) {
  (void)n_rays;
  // torch: the sum's gradient expanded over p, times value (mul's backward), then gather's backward,
  // a scatter-add into zeros in index order along each row
  for_requested_rays(n_rows, batch, rays, index, value, width, n_threads,
                     [&](int64_t r) { std::fill(gs + r * n_cells, gs + (r + 1) * n_cells, 0.0f); },
                     [&](int64_t r, int64_t k, const int64_t* idx, const float* val) {
                       float* gr = gs + r * n_cells;
                       const float gk = g[r * batch + k];
                       for (int64_t p = 0; p < width; ++p) gr[idx[p]] += gk * val[p];
                     });
}

namespace {

// Sums of one CSR row for kRows consecutive rows of s (transposed: st rows of n_rows floats, from r0):
// acc[r] = sum_p data[p] st[indices[p]][r0 + r], each from zero, in entry order. The accumulators are
// GCC vectors of a fixed count, so that they stay in registers; the multiply and the add stay two
// roundings (-ffp-contract=off for this file). Compiled for AVX-512, AVX2 and the baseline, chosen at
// load time (GCC function multiversioning).
typedef float v8 __attribute__((vector_size(32)));

template <int kVectors>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void csr_row_block(const int64_t* indices, const float* data, int64_t p0, int64_t p1, const float* st,
                   int64_t n_rows, int64_t r0, float* out) {
  v8 acc[kVectors] = {};
  for (int64_t p = p0; p < p1; ++p) {
    const float v = data[p];
    const v8 vv = v - v8{};
    const float* row = st + indices[p] * n_rows + r0;
    for (int k = 0; k < kVectors; ++k) {
      v8 x;
      std::memcpy(&x, row + 8 * k, sizeof x);
      const v8 prod = vv * x;
      acc[k] = acc[k] + prod;
    }
  }
  std::memcpy(out, acc, sizeof acc);
}

}  // namespace

void kernel_full_product(const int64_t* indptr, const int64_t* indices, const float* data, int64_t n_rays,
                         const float* s, int64_t n_rows, int64_t n_cells, float* out_t, float* st, int n_threads) {
  // s transposed in tiles (each tile's rows and columns stay in cache), with its rows padded to whole
  // blocks of 32 (zeros), so that each matrix entry updates 32 rows' sums in registers
  constexpr int64_t kTile = 32, kBlock = 32;
  const int64_t padded = (n_rows + kBlock - 1) / kBlock * kBlock;
  const int64_t cell_tiles = (n_cells + kTile - 1) / kTile;
  pool::for_ranges(cell_tiles, n_threads, kKeepDenormals, [&](int64_t a, int64_t b) {
    for (int64_t t = a; t < b; ++t) {
      const int64_t j0 = t * kTile, j1 = std::min(n_cells, j0 + kTile);
      for (int64_t r0 = 0; r0 < n_rows; r0 += kTile) {
        const int64_t r1 = std::min(n_rows, r0 + kTile);
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t r = r0; r < r1; ++r) st[j * padded + r] = s[r * n_cells + j];
      }
      for (int64_t j = j0; j < j1; ++j) std::fill(st + j * padded + n_rows, st + (j + 1) * padded, 0.0f);
    }
  });
  pool::for_ranges(n_rays, n_threads, kKeepDenormals, [&](int64_t a, int64_t b) {
    float acc[kBlock];
    for (int64_t i = a; i < b; ++i)
      for (int64_t r0 = 0; r0 < n_rows; r0 += kBlock) {
        csr_row_block<kBlock / 8>(indices, data, indptr[i], indptr[i + 1], st, padded, r0, acc);
        const int64_t m = std::min(kBlock, n_rows - r0);
        std::copy(acc, acc + m, out_t + i * n_rows + r0);
      }
  });
}

}  // namespace latentinv
