#!/usr/bin/env python3
"""Issue #5's expert-parallel figures from one device call's results: for every total batch that
moe-ep-bench and moe-bench (one GPU, the same call) both measured, the decode speed-up of the ranks
over one GPU; and one MoE layer's dispatch + combine at 64 tokens per rank (the profile).

  python3 scripts/ep-scaling.py MOE_BENCH_JSON MOE_EP_BENCH_JSON [--json OUT]
"""
import argparse
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("moe_bench")
    ap.add_argument("moe_ep_bench")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    try:
        one = json.load(open(a.moe_bench))
        ep = json.load(open(a.moe_ep_bench))
    except (OSError, ValueError) as e:
        print(f"ep-scaling: cannot read the results: {e}", file=sys.stderr)
        return 1
    ranks = ep.get("ranks") or ep.get("machine", {}).get("gpus")
    single = {d["batch"]: d["tokens_per_s"] for d in one.get("decode", []) if d.get("variant", "default") == "default"}
    out = {"ranks": ranks, "commit": ep.get("commit"), "decode": [], "profile": []}
    for d in ep.get("decode", []):
        b = d["batch"]
        row = {"batch": b, "ep_tokens_per_s": d["tokens_per_s"], "one_gpu_tokens_per_s": single.get(b)}
        if b in single:
            row["speedup"] = d["tokens_per_s"] / single[b]
        out["decode"].append(row)
        sp = f"{row['speedup']:.2f}x one GPU" if "speedup" in row else "no one-GPU figure at this batch"
        print(f"decode total batch {b:5d}: {d['tokens_per_s']:9.1f} tokens/s on {ranks} ranks ({sp})")
    for p in ep.get("profile", {}).get("decode", []):
        worst = max((r["dispatch_ms"] + r["combine_ms"] for r in p.get("ranks", [])), default=None)
        if worst is None:
            continue
        out["profile"].append({"batch_per_rank": p.get("batch_per_rank"), "dispatch_plus_combine_ms": worst})
        print(f"per layer at {p.get('batch_per_rank')} tokens per rank: dispatch + combine {worst * 1e3:.1f} us "
              "(the slowest rank)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
