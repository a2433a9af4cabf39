// The uniform draw of sampling step `step` of the request seeded `seed`: a pure function of the
// two, so the host's sampler (worker/sampler.h) and the GPU's sampling kernel (kernels/sample.cu)
// compute the same number from one definition and neither carries generator state.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

namespace moe {

// SplitMix64's output mix (Steele, Lea and Flood 2014): a bijection with full avalanche, cheap
// enough to run per token on any device. Also the finish of PrefixChainHash (common/prefix_hash.h).
MOE_HOST_DEVICE inline uint64_t Mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

namespace uniform_draw_detail {

// SplitMix64's increment (the golden ratio in 64 bits).
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

}  // namespace uniform_draw_detail

// Output `step` of the SplitMix64 stream that starts from the hashed seed (hashing the seed first
// keeps nearby seeds 0, 1, 2... from giving shifted copies of one stream), its top 53 bits as a
// double in [0, 1).
MOE_HOST_DEVICE inline double UniformDraw(uint64_t seed, uint64_t step) {
  using namespace uniform_draw_detail;
  const uint64_t state = Mix64(seed + kGolden) + (step + 1) * kGolden;
  return static_cast<double>(Mix64(state) >> 11) * 0x1.0p-53;
}

}  // namespace moe
