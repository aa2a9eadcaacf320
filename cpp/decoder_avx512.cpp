// The decoder kernels (decoder_kernel.hpp) compiled for one instruction set (avx512; flags in
// CMakeLists.txt), returned as a table; chosen at run time by decoder_kernels().
#define DECODER_NS avx512
#define DECODER_LANES 16
#include "decoder_kernel.hpp"

namespace latentinv {
const DecoderKernels* decoder_kernels_avx512() {
  static const DecoderKernels kernels = avx512::table("avx512");
  return &kernels;
}
}  // namespace latentinv
