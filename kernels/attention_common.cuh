// What the attention kernels share: the paged cache address of a (sequence, position, KV head),
// and the launchers of the specialised kernels (attention.cu dispatches between them).
#pragma once

#include "kernels/kernels.h"

namespace moe::gpu {

// Element offset of the head_dim-long key (or value) of `kv_head` at `pos` of sequence `seq`.
__device__ __forceinline__ int64_t CacheOffset(const PagedKv& kv, int seq, int pos, int kv_head) {
  const int bs = static_cast<int>(kv.block_size);
  const int64_t block = kv.block_tables[static_cast<int64_t>(seq) * kv.max_blocks_per_seq + pos / bs];
  return ((block * bs + pos % bs) * kv.kv_heads + kv_head) * kv.head_dim;
}

// Single-row tiles (decode): blocks per (row, KV head[, split of the keys]), four warps on different keys.
void LaunchDecodeAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                           int64_t num_tiles, int64_t heads, const PagedKv& kv, int64_t window, float scale, bf16* out,
                           const DecodeSplit* split, cudaStream_t s);

// How many blocks of the tensor-core kernel the device runs at once: SMs x blocks per SM (zeros
// for a head_dim it does not serve).
struct AttentionResidency {
  int sms = 0;
  int blocks_per_sm = 0;
};
AttentionResidency TensorCoreAttentionResidency(int64_t head_dim);
// The key tile the tensor-core kernel walks its keys in.
constexpr int kTensorCoreKeyTile = 64;

// Multi-row tiles on the tensor cores (flash-attention style), for head_dim 64 or 128 and tiles of
// at most 64 query vectors. Returns false (launching nothing) for other head dims.
bool LaunchTensorCoreAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                               int64_t num_tiles, int64_t max_rows, int64_t heads, const PagedKv& kv, int64_t window,
                               float scale, bf16* out, cudaStream_t s);

// One-row tiles (each its sequence's only row in the step) straight from the QKV product: RoPE,
// the cache write and the attention in the tensor-core kernel (QkvRopeKv then the split-keys
// instance, the same bits), for head_dim 64 or 128 and G <= 8. Returns false (launching nothing)
// otherwise.
bool LaunchTensorCoreRopeAttention(const bf16* qkv, const int32_t* row_seq, const int32_t* row_pos,
                                   const int32_t* tiles, int64_t num_tiles, int64_t heads, const double* inv_freq,
                                   const PagedKv& kv, int64_t window, float scale, bf16* out, cudaStream_t s);

}  // namespace moe::gpu
