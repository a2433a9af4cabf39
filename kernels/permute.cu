#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"
#include "kernels/rows.cuh"

#include <stdexcept>

namespace moe::gpu {
namespace {

__global__ void GatherRowsKernel(const bf16* x, const int32_t* src_row, int64_t H, bf16* out, const int32_t* count) {
  PdlGate();
  const int64_t r = blockIdx.x;
  if (count != nullptr && r >= *count) return;
  CopyRow(x + static_cast<int64_t>(src_row[r]) * H, out + r * H, H);
}

// One thread per group: the compacted index of each non-empty group (its rank among them, in
// group order) and its three pointers.
__global__ void GroupPointersKernel(const int32_t* offsets, int64_t G, const bf16* const* weights, const bf16* x,
                                    int64_t x_ld, bf16* y, int64_t y_ld, const bf16** w_out, const bf16** x_out,
                                    bf16** y_out) {
  PdlGate();
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= G || offsets[g + 1] == offsets[g]) return;
  int64_t idx = 0;
  for (int64_t h = 0; h < g; ++h) idx += offsets[h + 1] > offsets[h];
  w_out[idx] = weights[g];
  x_out[idx] = x + static_cast<int64_t>(offsets[g]) * x_ld;
  y_out[idx] = y + static_cast<int64_t>(offsets[g]) * y_ld;
}

// One block per slot: its padded row, and the token's row copied there.
__global__ void GatherPaddedKernel(const bf16* x, const int32_t* offsets, const int32_t* experts,
                                   const int32_t* position, int64_t k, int64_t P, int64_t H, bf16* out,
                                   int32_t* padded_position) {
  PdlGate();
  const int64_t i = blockIdx.x;
  const int32_t e = experts[i];
  const int64_t row = e * P + (position[i] - offsets[e]);
  if (threadIdx.x == 0) padded_position[i] = static_cast<int32_t>(row);
  CopyRow(x + (i / k) * H, out + row * H, H);
}

}  // namespace

void GatherPadded(const bf16* x, const int32_t* offsets, const int32_t* experts, const int32_t* position, int64_t n,
                  int64_t k, int64_t P, int64_t H, bf16* out, int32_t* padded_position, cudaStream_t s) {
  if (n == 0) return;
  if (n > (int64_t{1} << 31) - 1) throw std::invalid_argument("GatherPadded: too many slots");
  Launch(GatherPaddedKernel, static_cast<unsigned>(n), 128, 0, s, x, offsets, experts, position, k, P, H, out,
         padded_position);
  MOE_CUDA_CHECK_LAUNCH();
}

void GroupPointers(const int32_t* offsets, int64_t G, const bf16* const* weights, const bf16* x, int64_t x_ld, bf16* y,
                   int64_t y_ld, const bf16** w_out, const bf16** x_out, bf16** y_out, cudaStream_t s) {
  if (G == 0) return;
  Launch(GroupPointersKernel, static_cast<unsigned>((G + 255) / 256), 256, 0, s, offsets, G, weights, x, x_ld, y, y_ld,
                                                                             w_out, x_out, y_out);
  MOE_CUDA_CHECK_LAUNCH();
}

void GatherRows(const bf16* x, const int32_t* src_row, int64_t R, int64_t H, bf16* out, cudaStream_t s,
                const int32_t* count) {
  if (R == 0) return;
  Launch(GatherRowsKernel, static_cast<unsigned>(R), 128, 0, s, x, src_row, H, out, count);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
