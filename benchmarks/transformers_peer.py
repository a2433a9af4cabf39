#!/usr/bin/env python3
"""The peer figures for moe-bench: Hugging Face transformers' MixtralForCausalLM at the same shape
(random bf16 weights built directly on the GPU), the same measurements: prefill of 1 x 512 tokens,
and decode tokens/s at batch 1, 16, 64, 256 after a 128-token context.

Run on the GPU machine (its python3 has torch and transformers):
  python3 benchmarks/transformers_peer.py --config benchmarks/configs/mixtral-8x7b-v0.1.json --out peer.json
"""
import argparse
import json
import os
import platform
import sys
import time

import torch
import transformers
from transformers import MixtralConfig, MixtralForCausalLM


def build_model(config_path, attn):
    raw = json.load(open(config_path))
    cfg = MixtralConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
    cfg._attn_implementation = attn
    # Build on the meta device, then allocate bf16 storage on the GPU and fill it there: a CPU
    # initialisation of 46.7B parameters would take many minutes and 190 GB of float32.
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("meta"):
        model = MixtralForCausalLM(cfg)
    model = model.to_empty(device="cuda")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms
                p.fill_(1.0)
            else:
                p.normal_(0.0, 1.0 / (p.shape[-1] ** 0.5))
        # Buffers computed at construction (the rotary frequencies) were lost with the meta
        # device: rebuild the rotary module on the GPU.
        rotary = model.model.rotary_emb
        model.model.rotary_emb = type(rotary)(config=cfg, device="cuda")
    model.eval()
    return model, cfg


def timed(fn, reps):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="benchmarks/configs/mixtral-8x7b-v0.1.json")
    ap.add_argument("--out", default="transformers-peer.json")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--prefill", type=int, default=512)
    args = ap.parse_args()

    model, cfg = build_model(args.config, args.attn)
    V = cfg.vocab_size
    g = torch.Generator(device="cuda").manual_seed(1)
    result = {
        "peer": "transformers MixtralForCausalLM",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "attn_implementation": args.attn,
        "config": os.path.basename(args.config),
        "machine": {"gpu": torch.cuda.get_device_name(0), "host": platform.node()},
        "commit": os.environ.get("MOE_COMMIT", "unknown"),
        "command": " ".join([sys.executable] + sys.argv),
        "decode": [],
    }
    with torch.no_grad():
        ids = torch.randint(0, V, (1, args.prefill), device="cuda", generator=g)
        model(ids)  # warm-up
        prefill_s = timed(lambda: model(ids), 3)
        result["prefill"] = {"tokens": args.prefill, "ms": prefill_s * 1e3, "tokens_per_s": args.prefill / prefill_s}
        print(f"prefill 1 x {args.prefill}: {prefill_s * 1e3:.1f} ms", flush=True)

        for B in [int(b) for b in args.batches.split(",")]:
            ctx = torch.randint(0, V, (B, args.context), device="cuda", generator=g)
            out = model(ctx, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            steps = 20 if B <= 16 else (6 if B <= 64 else 3)
            out = model(nxt, past_key_values=past, use_cache=True)  # warm-up step
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            step_s = (time.perf_counter() - t0) / steps
            result["decode"].append({"batch": B, "context": args.context, "steps": steps, "ms_per_step": step_s * 1e3,
                                     "tokens_per_s": B / step_s})
            print(f"decode batch {B:4d}: {step_s * 1e3:.1f} ms/step, {B / step_s:.1f} tokens/s", flush=True)
            del out, past
            torch.cuda.empty_cache()
    json.dump(result, open(args.out, "w"), indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
