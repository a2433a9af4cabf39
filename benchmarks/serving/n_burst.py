#!/usr/bin/python3
"""One Generate request with n=24 completions of a 480-token random prompt, four times (new prompt each
time): seconds to the end and to the first token, and the prefix-cache tokens looked up and found
(GetStats deltas). Usage: n_burst.py HOST:PORT BUILD_DIR OUT.json (the Python client from this
checkout, the generated protos from BUILD_DIR/python)."""
import os, sys, time, random, json
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
os.environ.setdefault("MOE_PYTHON_PROTO_DIR", sys.argv[2] + "/python")
from moe_client import MoeClient
c = MoeClient(sys.argv[1], timeout=120)
out = []
for rep in range(4):
    rnd = random.Random(100 + rep)
    prompt = [rnd.randrange(3, 2048) for _ in range(480)]
    before = c.stats()
    q0 = sum(r.prefix_cache_queried_tokens for r in before.ranks); h0 = sum(r.prefix_cache_hit_tokens for r in before.ranks)
    t0 = time.monotonic(); first = None
    n_tokens = 0
    for chunk in c.generate(token_ids=prompt, max_tokens=32, temperature=1.0, seed=rep, n=24, ignore_eos=True):
        if first is None and chunk.token_ids: first = time.monotonic() - t0
        n_tokens += len(chunk.token_ids)
    total = time.monotonic() - t0
    time.sleep(1.2)  # a heartbeat carries the counters
    after = c.stats()
    q1 = sum(r.prefix_cache_queried_tokens for r in after.ranks); h1 = sum(r.prefix_cache_hit_tokens for r in after.ranks)
    out.append({"rep": rep, "seconds": round(total, 3), "first_token_s": round(first, 3), "tokens": n_tokens,
                "queried": q1 - q0, "hit": h1 - h0})
    print(out[-1], flush=True)
json.dump(out, open(sys.argv[3], "w"), indent=1)
