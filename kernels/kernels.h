// CUDA kernels of the forward, bf16 storage with float32 arithmetic. Every launcher takes raw
// device pointers and a stream and returns after enqueueing (errors are checked at launch).
// Shapes are row-major; weight matrices are [out, in] as in the checkpoint. This header is plain
// C++ so host code compiled by the C++ compiler can call the launchers.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace moe::gpu {

using bf16 = __nv_bfloat16;

// out[t, :] = float(table[ids[t], :]). table: [V, H].
void EmbeddingGather(const bf16* table, const int32_t* ids, int64_t T, int64_t H, float* out, cudaStream_t s);

// The residual stream stays float32: residual[t] += delta[t] (when delta is not null), then
// out[t] = bf16(residual[t] / rms(residual[t]) * weight). One pass fuses the add and the norm.
void AddRmsNorm(float* residual, const float* delta, const bf16* weight, int64_t T, int64_t H, float eps,
                bf16* out, cudaStream_t s);

// Rotary embedding (rotate-half form) in place on x[T, heads, head_dim] at positions[t];
// inv_freq: [head_dim / 2]. Angles are computed in double (long contexts).
void Rope(bf16* x, const int32_t* positions, int64_t T, int64_t heads, int64_t head_dim, const double* inv_freq,
          cudaStream_t s);

// out[m, i] = silu(gate_up[m, i]) * gate_up[m, I + i]. gate_up: [M, 2I] (w1 x | w3 x).
void SwiGlu(const bf16* gate_up, int64_t M, int64_t I, bf16* out, cudaStream_t s);

// Mixtral routing per token: softmax over E experts, top-k (ties to the lower id), renormalised.
// logits: [T, E] float32; experts/weights: [T, k]. E <= 256.
void RouterTopK(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* experts, float* weights,
                cudaStream_t s);

// out[r, :] = x[src_row[r], :]: the dispatch permutation (and any row gather). x, out: [*, H].
void GatherRows(const bf16* x, const int32_t* src_row, int64_t R, int64_t H, bf16* out, cudaStream_t s);

// residual[t, :] += sum over s = 0..k-1 of weight[t*k+s] * y[position[t*k+s], :], slots in order.
void CombineAdd(const bf16* y, const int32_t* position, const float* weight, int64_t T, int64_t k, int64_t H,
                float* residual, cudaStream_t s);

// The paged KV cache of one layer: [num_blocks, block_size, kv_heads, head_dim] for keys and values.
struct PagedKv {
  bf16* keys = nullptr;
  bf16* values = nullptr;
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  int64_t block_size = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

// Writes k, v ([rows, kv_heads, head_dim]) of each row at (row_seq[r], row_pos[r]).
void WriteKv(const bf16* k, const bf16* v, const int32_t* row_seq, const int32_t* row_pos, int64_t rows,
             const PagedKv& kv, cudaStream_t s);

// Attention of each query row over its sequence's cached keys: row r (of sequence row_seq[r] at
// position row_pos[r]) sees keys j <= row_pos[r], and j > row_pos[r] - window when window > 0.
// q, out: [rows, heads, head_dim]. One block serves all query heads of one KV head (GQA), with an
// online softmax over the keys, so a decode row reads its keys once.
void PagedAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, int64_t rows, int64_t heads,
                    const PagedKv& kv, int64_t window, float scale, bf16* out, cudaStream_t s);

// float32 <-> bf16 conversions of n values.
void ToBf16(const float* in, int64_t n, bf16* out, cudaStream_t s);
void ToF32(const bf16* in, int64_t n, float* out, cudaStream_t s);

}  // namespace moe::gpu
