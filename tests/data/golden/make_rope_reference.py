#!/usr/bin/env python3
"""Record what transformers' MixtralRotaryEmbedding makes of config.json's RoPE fields.

For each case (a config.json of a small Mixtral with its RoPE fields) rope_reference.json gets the
inverse frequencies (float32, as transformers computes them) and the attention scaling that
MixtralRotaryEmbedding multiplies into cos and sin. rope_test.cc reads each config with
ModelConfig::FromJson and compares worker/model/rope.h's frequencies and scale with these.

Usage: make_rope_reference.py OUT.json   (needs torch and transformers)
"""
import json, sys

import torch
import transformers
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralRotaryEmbedding


def base(head_dim=128, **extra):
    c = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 512,
         "hidden_size": 32 * head_dim // 8, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": head_dim, "num_local_experts": 4,
         "num_experts_per_tok": 2, "max_position_embeddings": 32768, "rope_theta": 1e6}
    c.update(extra)
    return c


CASES = {
    "default": base(),
    "default_theta_inside": base(64, rope_theta=1e4, rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
    "linear": base(64, rope_theta=1e4, rope_scaling={"type": "linear", "factor": 4.0}),
    "yarn": base(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}),
    "yarn_mscale": base(64, rope_theta=1e4, max_position_embeddings=8192,
                        rope_scaling={"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 1024,
                                      "mscale": 1.0, "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2,
                                      "truncate": False}),
    "yarn_no_factor": base(96, max_position_embeddings=16384,
                           rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": None,
                                            "original_max_position_embeddings": 4096, "attention_factor": 1.25}),
    "yarn_default_original": base(rope_scaling={"rope_type": "yarn", "factor": 2.0}),
    "llama3": base(rope_theta=5e5, max_position_embeddings=131072,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192}),
    "llama3_v5": base(64, max_position_embeddings=65536,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 1e5, "factor": 16.0,
                                       "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                                       "original_max_position_embeddings": 2048}),
}


def main(out):
    cases = {}
    for name, config_json in CASES.items():
        config = MixtralConfig(**json.loads(json.dumps(config_json)))
        rope = MixtralRotaryEmbedding(config)
        cases[name] = {"config": config_json, "inv_freq": rope.inv_freq.float().tolist(),
                       "attention_scaling": float(rope.attention_scaling)}
        print(name, config.rope_parameters, "attention_scaling", rope.attention_scaling)
    with open(out, "w") as f:
        json.dump({"generator": f"transformers {transformers.__version__} MixtralRotaryEmbedding, torch {torch.__version__}",
                   "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
