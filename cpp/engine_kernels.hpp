// CPU kernels of the SGD engine's straight-ray iteration (latentinv.inversion.native): each computes
// what a sequence of torch operations computes, with the same float32 operations in the same order, so
// that its results are bit-identical to torch's (tested against torch on generated inputs). Compiled
// with -ffp-contract=off (no fused multiply-add) and run without flushing denormals, as torch rounds.
#pragma once
#include <cstdint>

namespace latentinv {

// The paper's slowness map: s = 1 / (0.06 + 0.02 (1 - x)), as torch evaluates it in float32.
void paper_slowness_forward(const float* x, int64_t n, float* s, int n_threads);
// Its input gradient from the output gradient g and the output s: gx = (g (s s)) 0.02.
void paper_slowness_backward(const float* g, const float* s, int64_t n, float* gx, int n_threads);

// Rows of a padded sparse kernel (index, value: (n_rays, width)) for ray indices rays (n_rows, batch):
// out[r, b, p] = s[r, index[rays[r, b], p]] * value[rays[r, b], p], s: (n_rows, n_cells).
void kernel_rows_forward(const float* s, int64_t n_rows, int64_t n_cells, const int64_t* index,
                         const float* value, int64_t n_rays, int64_t width, const int64_t* rays, int64_t batch,
                         float* out, int n_threads);
// Its gradient with respect to s for the gradient g (n_rows, batch) of out's sums over p: gs is zeroed,
// then gs[r, index[rays[r, b], p]] += g[r, b] * value[rays[r, b], p] in (b, p) order.
void kernel_rows_backward(const float* g, int64_t n_rows, int64_t n_cells, const int64_t* index,
                          const float* value, int64_t n_rays, int64_t width, const int64_t* rays, int64_t batch,
                          float* gs, int n_threads);

// The full product of a CSR matrix (indptr, indices, data: n_rays rows) with every row of s
// (n_rows, n_cells): out_t[i, r] = sum_p data[p] s[r, indices[p]] over row i's entries in order, each
// sum started from zero. st: scratch of n_cells * ceil(n_rows / 32) * 32 floats (s transposed).
void kernel_full_product(const int64_t* indptr, const int64_t* indices, const float* data, int64_t n_rays,
                         const float* s, int64_t n_rows, int64_t n_cells, float* out_t, float* st, int n_threads);

}  // namespace latentinv
