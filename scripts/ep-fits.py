#!/usr/bin/env python3
"""Whether a config's weights fit on GPUS GPUs of MEM_MIB each with expert parallelism (every rank
holds the replicated part, the embeddings, attention, norms, routers and LM head, and an even share
of each layer's experts, rounded up), with 15% and 4 GB to spare for the KV cache, step buffers and
libraries. Prints 1 or 0 and the figures; gpu-run.sh runs moe-ep-bench on a config that fits.

usage: ep-fits.py CONFIG GPUS MEM_MIB
"""
import json
import sys


def rank_bytes(c, gpus):
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    layers, experts = c["num_hidden_layers"], c["num_local_experts"]
    head_dim = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    lm_heads = 1 if c.get("tie_word_embeddings") else 2
    replicated = lm_heads * v * h + layers * (h * (q + 2 * kv) + q * h + h * experts + 2 * h) + h
    share = -(-experts // gpus)  # experts of a layer on one rank, rounded up
    return 2 * (replicated + layers * share * 3 * h * i)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    c = json.load(open(sys.argv[1]))
    gpus, mem = int(sys.argv[2]), int(sys.argv[3]) * 2**20
    need = rank_bytes(c, gpus)
    fits = need * 1.15 + 4e9 <= mem
    print(1 if fits else 0)
    print(f"{sys.argv[1]}: {need / 1e9:.1f} GB of weights a rank on {gpus} GPUs of {mem / 1e9:.0f} GB",
          file=sys.stderr)


if __name__ == "__main__":
    main()
