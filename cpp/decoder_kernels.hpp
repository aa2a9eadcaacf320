// The frozen decoder's CPU kernels (decoder_kernel.hpp), one table per instruction set, and the
// batched entry points that run them over samples on worker threads (decoder_kernels.cpp).
#pragma once
#include <cstdint>
#include <string>

namespace latentinv {

struct DecoderKernels {
  const char* isa;
  void (*norm_stats)(const float* x, int64_t hw, int c, float eps, float* mean, float* rstd);
  void (*norm_relu_forward)(const float* x, int64_t hw, int c, float eps, float* y, float* mean,
                            float* rstd);
  void (*norm_relu_backward)(const float* x, const float* g, const float* mean, const float* rstd,
                             int64_t hw, int c, float* dx);
  void (*deconv1_forward)(const float* x, int c, int h, int wd, const float* w, int k, int oh, int ow,
                          const float* mean, const float* rstd, float* y, float* scratch, float* acc);
  void (*deconv1_backward)(const float* g, int oh, int ow, const float* wt, int k, int c, int h, int wd,
                           float* dx);
};

// Vectors of 16 output columns per phase row of the one-channel transposed convolution; the kernels
// take 1 to 4 (output rows up to 128 columns).
inline int deconv1_phase_vectors(int ow) { return ((ow + 1) / 2 + 15) / 16; }
constexpr int kDeconv1MaxWidth = 128;
constexpr int kDeconv1MaxKernel = 16;

const DecoderKernels* decoder_kernels_portable();
const DecoderKernels* decoder_kernels_avx2();     // nullptr when not compiled in
const DecoderKernels* decoder_kernels_avx512();   // nullptr when not compiled in

// isa: "auto" (the widest the CPU supports), "avx512", "avx2" or "portable"; throws
// std::invalid_argument for an unknown or unavailable one.
const DecoderKernels& decoder_kernels(const std::string& isa);

// Run the batched entry points' workers on an OpenMP runtime's thread pool, given the addresses of its
// GOMP_parallel and omp_get_thread_num (both 0: back to std::threads of their own).
void set_openmp_runtime(uintptr_t gomp_parallel, uintptr_t omp_get_thread_num);

// Batched entry points (n samples; n_threads >= 1 workers, each over a contiguous range of samples).
void norm_relu_forward_batch(const DecoderKernels& kr, const float* x, int64_t n, int64_t hw, int c,
                             float eps, float* y, float* mean, float* rstd, int n_threads);
void norm_relu_backward_batch(const DecoderKernels& kr, const float* x, const float* g, const float* mean,
                              const float* rstd, int64_t n, int64_t hw, int c, float* dx, int n_threads);
// With mean and rstd (n, c): the instance norm + ReLU of x first (its statistics written there, eps).
void deconv1_forward_batch(const DecoderKernels& kr, const float* x, int64_t n, int c, int h, int wd,
                           const float* w, int k, int oh, int ow, float* y, int n_threads, float eps = 0,
                           float* mean = nullptr, float* rstd = nullptr);
// With x, mean and rstd: the gradient through that instance norm + ReLU too (dx with respect to x).
void deconv1_backward_batch(const DecoderKernels& kr, const float* g, int64_t n, int oh, int ow,
                            const float* w, int k, int c, int h, int wd, float* dx, int n_threads,
                            const float* x = nullptr, const float* mean = nullptr, const float* rstd = nullptr);

// col2im of a transposed convolution's taps, NHWC: y (n, oh, ow, c) = 0, then for each input pixel
// (i, j) and tap (a, b) in order, y[n, i sh + a - ph, j sw + b - pw, :] += taps[n, i, j, a, b, :] (taps
// outside y are dropped).
void col2im_batch(const float* taps, int64_t n, int h, int w, int kh, int kw, int c, int sh, int sw, int ph,
                  int pw, int oh, int ow, float* y, int n_threads);

}  // namespace latentinv
