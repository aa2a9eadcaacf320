// The compiled core's parallel loop for the CPU kernels of torch-side work (decoder_kernels.cpp,
// engine_kernels.cpp): n items split into contiguous ranges, one per worker thread, run on torch's own
// OpenMP pool when set_openmp_runtime() was given its entry points, else on std::threads.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace latentinv {
namespace pool {

// Denormal inputs and results flushed to zero for the guard's lifetime (this thread): gradients through
// a saturated sigmoid reach 1e-40 and below, where each denormal operation costs about a hundred cycles
// (the first decoder kernels ran 7x slower in an inversion than on random data). oneDNN's kernels run
// so too. Kernels that must round as torch's own operations do run without it.
class FlushDenormals {
 public:
#if defined(__x86_64__) || defined(__i386__)
  explicit FlushDenormals(bool on = true) : saved_(_mm_getcsr()), on_(on) {
    if (on_) _mm_setcsr(saved_ | 0x8040u);   // FTZ | DAZ
  }
  ~FlushDenormals() {
    if (on_) _mm_setcsr(saved_);
  }

 private:
  unsigned saved_;
  bool on_;
#else
  explicit FlushDenormals(bool = true) {}
#endif
};

// The OpenMP runtime torch runs on, when set: the kernels' workers are then the threads of torch's own
// pool. Their own std::threads would share the cores with that pool's workers, which spin for
// milliseconds after every torch operation (libgomp's default wait policy): two threads ran the
// kernels no faster than one.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpThreadNum = int (*)();
inline std::atomic<GompParallel> openmp_parallel{nullptr};
inline std::atomic<OmpThreadNum> openmp_thread_num{nullptr};

template <typename F>
struct OpenMPTask {
  F* body;
  int64_t n, t;
  OmpThreadNum thread_num;
  bool flush;
  static void run(void* p) {
    auto* task = static_cast<OpenMPTask*>(p);
    const int64_t w = task->thread_num();
    if (w >= task->t) return;
    FlushDenormals ftz(task->flush);
    (*task->body)(task->n * w / task->t, task->n * (w + 1) / task->t);
  }
};

// body(begin, end) over [0, n) on up to n_threads workers (the calling thread takes the first range);
// flush: denormals flushed to zero inside body.
template <typename F>
void for_ranges(int64_t n, int n_threads, bool flush, F&& body) {
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(n_threads, n));
  if (t == 1) {
    FlushDenormals ftz(flush);
    body(int64_t{0}, n);
    return;
  }
  const GompParallel parallel = openmp_parallel.load();
  const OmpThreadNum thread_num = openmp_thread_num.load();
  if (parallel != nullptr && thread_num != nullptr) {
    using Body = std::remove_reference_t<F>;
    OpenMPTask<Body> task{&body, n, t, thread_num, flush};
    parallel(&OpenMPTask<Body>::run, &task, static_cast<unsigned>(t), 0);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(t - 1));
  auto range = [&](int64_t w) { return std::make_pair(n * w / t, n * (w + 1) / t); };
  for (int64_t w = 1; w < t; ++w) {
    const auto r = range(w);
    workers.emplace_back([&body, r, flush] {
      FlushDenormals ftz(flush);
      body(r.first, r.second);
    });
  }
  const auto r0 = range(0);
  {
    FlushDenormals ftz(flush);
    body(r0.first, r0.second);
  }
  for (auto& th : workers) th.join();
}

}  // namespace pool
}  // namespace latentinv
