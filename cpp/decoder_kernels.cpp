// Run-time choice of the decoder kernels' instruction set, and their batched entry points: samples
// are split into contiguous ranges, one per worker thread (the calling thread takes the first).
#include "decoder_kernels.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>

#include "worker_pool.hpp"

namespace latentinv {

#ifndef LATENTINV_HAVE_DECODER_AVX2
const DecoderKernels* decoder_kernels_avx2() { return nullptr; }
#endif
#ifndef LATENTINV_HAVE_DECODER_AVX512
const DecoderKernels* decoder_kernels_avx512() { return nullptr; }
#endif

namespace {

bool cpu_has(const char* isa) {
#if defined(__x86_64__) || defined(__i386__)
  const std::string name(isa);
  if (name == "avx512") return __builtin_cpu_supports("avx512f");
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  (void)isa;
#endif
  return false;
}

template <typename F>
void for_samples(int64_t n, int n_threads, F&& body) {
  pool::for_ranges(n, n_threads, true, std::forward<F>(body));
}

}  // namespace

void set_openmp_runtime(uintptr_t gomp_parallel, uintptr_t omp_get_thread_num) {
  if ((gomp_parallel == 0) != (omp_get_thread_num == 0))
    throw std::invalid_argument("decoder kernels: give both OpenMP entry points, or neither");
  pool::openmp_thread_num.store(reinterpret_cast<pool::OmpThreadNum>(omp_get_thread_num));
  pool::openmp_parallel.store(reinterpret_cast<pool::GompParallel>(gomp_parallel));
}

const DecoderKernels& decoder_kernels(const std::string& isa) {
  if (isa == "auto") {
    if (decoder_kernels_avx512() && cpu_has("avx512")) return *decoder_kernels_avx512();
    if (decoder_kernels_avx2() && cpu_has("avx2")) return *decoder_kernels_avx2();
    return *decoder_kernels_portable();
  }
  if (isa == "portable") return *decoder_kernels_portable();
  const DecoderKernels* k = isa == "avx512" ? decoder_kernels_avx512()
                            : isa == "avx2" ? decoder_kernels_avx2()
                                            : nullptr;
  if (isa != "avx512" && isa != "avx2")
    throw std::invalid_argument("decoder kernels: isa must be 'auto', 'avx512', 'avx2' or 'portable', got '" +
                                isa + "'");
  if (k == nullptr || !cpu_has(isa.c_str()))
    throw std::invalid_argument("decoder kernels: isa '" + isa +
                                "' is not available here (not compiled in, or the CPU lacks it)");
  return *k;
}

void norm_relu_forward_batch(const DecoderKernels& kr, const float* x, int64_t n, int64_t hw, int c,
                             float eps, float* y, float* mean, float* rstd, int n_threads) {
  for_samples(n, n_threads, [&](int64_t a, int64_t b) {
    for (int64_t s = a; s < b; ++s)
      kr.norm_relu_forward(x + s * hw * c, hw, c, eps, y + s * hw * c, mean + s * c, rstd + s * c);
  });
}

void norm_relu_backward_batch(const DecoderKernels& kr, const float* x, const float* g, const float* mean,
                              const float* rstd, int64_t n, int64_t hw, int c, float* dx, int n_threads) {
  for_samples(n, n_threads, [&](int64_t a, int64_t b) {
    for (int64_t s = a; s < b; ++s)
      kr.norm_relu_backward(x + s * hw * c, g + s * hw * c, mean + s * c, rstd + s * c, hw, c, dx + s * hw * c);
  });
}

void deconv1_forward_batch(const DecoderKernels& kr, const float* x, int64_t n, int c, int h, int wd,
                           const float* w, int k, int oh, int ow, float* y, int n_threads, float eps,
                           float* mean, float* rstd) {
  const int nq = deconv1_phase_vectors(ow);
  const int64_t scratch = int64_t{16} * h * (nq * 16 + 16);   // up to 16 planes
  const int64_t acc = int64_t{2} * oh * nq * 16;
  const int64_t hw = int64_t{h} * wd;
  for_samples(n, n_threads, [&](int64_t a, int64_t b) {
    // zeroed (the planes' padding), 64-byte aligned (the planes' rows are whole vectors)
    std::vector<float> buffer(static_cast<size_t>(scratch + acc + 16));
    const uintptr_t address = reinterpret_cast<uintptr_t>(buffer.data());
    float* work = buffer.data() + ((64 - address % 64) % 64) / sizeof(float);
    for (int64_t s = a; s < b; ++s) {
      const float* xs = x + s * hw * c;
      if (mean != nullptr) kr.norm_stats(xs, hw, c, eps, mean + s * c, rstd + s * c);
      kr.deconv1_forward(xs, c, h, wd, w, k, oh, ow, mean != nullptr ? mean + s * c : nullptr,
                         rstd != nullptr ? rstd + s * c : nullptr, y + s * oh * ow, work, work + scratch);
    }
  });
}

void deconv1_backward_batch(const DecoderKernels& kr, const float* g, int64_t n, int oh, int ow,
                            const float* w, int k, int c, int h, int wd, float* dx, int n_threads,
                            const float* x, const float* mean, const float* rstd) {
  std::vector<float> wt(static_cast<size_t>(k) * k * c);   // [kh][kw][c]
  for (int cc = 0; cc < c; ++cc)
    for (int t = 0; t < k * k; ++t) wt[static_cast<size_t>(t) * c + cc] = w[static_cast<size_t>(cc) * k * k + t];
  const int64_t hw = int64_t{h} * wd;
  for_samples(n, n_threads, [&](int64_t a, int64_t b) {
    // through the norm: each sample's gradient at the norm's output stays in this (cache-sized) buffer
    std::vector<float> gn(x != nullptr ? static_cast<size_t>(hw * c) : 0);
    for (int64_t s = a; s < b; ++s) {
      float* out = x != nullptr ? gn.data() : dx + s * hw * c;
      kr.deconv1_backward(g + s * oh * ow, oh, ow, wt.data(), k, c, h, wd, out);
      if (x != nullptr)
        kr.norm_relu_backward(x + s * hw * c, out, mean + s * c, rstd + s * c, hw, c, dx + s * hw * c);
    }
  });
}

void col2im_batch(const float* taps, int64_t n, int h, int w, int kh, int kw, int c, int sh, int sw, int ph,
                  int pw, int oh, int ow, float* y, int n_threads) {
  const int64_t in_sample = int64_t{h} * w * kh * kw * c, out_sample = int64_t{oh} * ow * c;
  for_samples(n, n_threads, [&](int64_t a0, int64_t a1) {
    for (int64_t s = a0; s < a1; ++s) {
      float* ys = y + s * out_sample;
      std::fill(ys, ys + out_sample, 0.0f);
      const float* t = taps + s * in_sample;
      for (int i = 0; i < h; ++i)
        for (int j = 0; j < w; ++j)
          for (int a = 0; a < kh; ++a)
            for (int b = 0; b < kw; ++b, t += c) {
              const int oy = i * sh + a - ph, ox = j * sw + b - pw;
              if (oy < 0 || oy >= oh || ox < 0 || ox >= ow) continue;
              float* dst = ys + (static_cast<int64_t>(oy) * ow + ox) * c;
              for (int cc = 0; cc < c; ++cc) dst[cc] += t[cc];
            }
    }
  });
}

}  // namespace latentinv
