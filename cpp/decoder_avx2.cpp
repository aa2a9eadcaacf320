// The decoder kernels (decoder_kernel.hpp) compiled for one instruction set (avx2; flags in
// CMakeLists.txt), returned as a table; chosen at run time by decoder_kernels().
#define DECODER_NS avx2
#define DECODER_LANES 8
#include "decoder_kernel.hpp"

namespace latentinv {
const DecoderKernels* decoder_kernels_avx2() {
  static const DecoderKernels kernels = avx2::table("avx2");
  return &kernels;
}
}  // namespace latentinv
