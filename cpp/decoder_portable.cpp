// The decoder kernels (decoder_kernel.hpp) compiled for one instruction set (portable; flags in
// CMakeLists.txt), returned as a table; chosen at run time by decoder_kernels().
#define DECODER_NS portable
#define DECODER_LANES 4
#include "decoder_kernel.hpp"

namespace latentinv {
const DecoderKernels* decoder_kernels_portable() {
  static const DecoderKernels kernels = portable::table("portable");
  return &kernels;
}
}  // namespace latentinv
