// The sweep solver's kernel with AVX2 lanes (4 sources per pass). Compiled with -mavx2 only (no FMA:
// each edge is rounded as a multiply then an add, as in the scalar kernel and the Dijkstra engine);
// called only after a run-time check that the CPU supports AVX2 (ShortestPathEngine::avx2_available).
#include <immintrin.h>

#include "sweep_kernel.hpp"

namespace {
struct Vec {
  static constexpr int K = 4;
  __m256d v;
  static inline Vec load(const double* p) { return Vec{_mm256_loadu_pd(p)}; }
  static inline void store(double* p, const Vec& a) { _mm256_storeu_pd(p, a.v); }
  static inline Vec broadcast(double x) { return Vec{_mm256_set1_pd(x)}; }
  static inline Vec add(const Vec& a, const Vec& b) { return Vec{_mm256_add_pd(a.v, b.v)}; }
  static inline Vec mul(const Vec& a, const Vec& b) { return Vec{_mm256_mul_pd(a.v, b.v)}; }
  // min(a, b) = b < a ? b : a per lane (vminpd returns its second operand unless the first is less)
  static inline Vec min(const Vec& a, const Vec& b) { return Vec{_mm256_min_pd(b.v, a.v)}; }
  static inline bool any_less(const Vec& a, const Vec& b) {
    return _mm256_movemask_pd(_mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ)) != 0;
  }
  static inline double min_where_less(const Vec& a, const Vec& b) {
    const __m256d sel = _mm256_blendv_pd(_mm256_set1_pd(__builtin_inf()), a.v,
                                         _mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ));
    __m128d lo = _mm_min_pd(_mm256_castpd256_pd128(sel), _mm256_extractf128_pd(sel, 1));
    lo = _mm_min_sd(lo, _mm_unpackhi_pd(lo, lo));
    return _mm_cvtsd_f64(lo);

  }
};
}  // namespace

#define LATENTINV_SWEEP_KERNEL_BODY
#include "sweep_kernel.hpp"
#undef LATENTINV_SWEEP_KERNEL_BODY

namespace latentinv {
namespace sweep {
uint32_t process_cell_avx2(const Grid& g, const double* slowness, State& st, int32_t r, int32_t c,
                           double* key) {
  return process_cell(g, slowness, st, r, c, key);
}
}  // namespace sweep
}  // namespace latentinv
