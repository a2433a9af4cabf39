#!/usr/bin/python3
"""Mixed concurrent load against a 3-rank cluster with a small KV cache, checked against the same
requests run one at a time on a 1-rank cluster.

The load: ~130 requests at once (greedy and seeded sampling, n > 1, stop strings, presence and
frequency penalties, structured outputs, prompts sharing prefixes, priorities under
--scheduling-policy priority, streams the client closes after their first chunk, Score calls), on
ranks whose caches hold 320 positions and whose steps take at most 16 tokens, so sequences are
admitted on demand, preempted, recomputed and prefilled in chunks. Each completed answer must be the
reference's (token ids, text, finish and stop reasons, usage), a cancelled one a prefix of it, and
every stream well formed (one finish per choice, nothing after it); afterwards the cluster must be
idle (nothing running or waiting, no KV block in use on any rank).

Preemption recomputes a context as a prefill, whose sums run in another order than the decode steps
did (docs/architecture.md, "Worker loop"): a pick may go the other way where two tokens are within
float rounding. A divergence is accepted only at such a near tie, read from the reference's own
logprobs: greedy, the reference's two best processed logits within 1e-3; seeded, the request's
uniform draw (common/uniform_draw.h) within 1e-3 of a boundary of its top-k distribution.

Environment (CTest sets them): MOE_BUILD_DIR, MOE_PYTHON_PROTO_DIR, MOE_SOURCE_DIR.
"""

import math
import os
import random
import signal
import subprocess
import sys
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

from launched_cluster import BUILD_DIR, SOURCE_DIR, LaunchedCluster  # noqa: E402

os.environ.setdefault("MOE_PYTHON_PROTO_DIR", os.path.join(BUILD_DIR, "python"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "clients", "python"))

import grpc  # noqa: E402

from moe_client import MoeClient  # noqa: E402

TEXTS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\n",
    "KING RICHARD III:\nNow is the winter of our discontent\nMade glorious summer by this sun of York;\n",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n",
]
SUFFIXES = ["ROMEO:", "JULIET:\n", "KING HENRY:", "Second Citizen:\nWhat", "GLOUCESTER:\nAy,", "O, "]
TOP = 5  # alternatives every generation asks for (the near-tie checks read them)
SEEDED_TOP_K = 5  # seeded requests sample from this many tokens, all among the alternatives

_M64 = (1 << 64) - 1


def _mix64(x):
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def uniform_draw(seed, step):
    """common/uniform_draw.h's UniformDraw."""
    golden = 0x9E3779B97F4A7C15
    state = (_mix64((seed + golden) & _M64) + (step + 1) * golden) & _M64
    return (_mix64(state) >> 11) * 2.0 ** -53


def make_requests(client, count, seed):
    rng = random.Random(seed)
    prefixes = [client.tokenize(t) for t in TEXTS]
    reqs = []
    for i in range(count):
        if rng.random() < 0.7:
            prompt = list(rng.choice(prefixes))
            if rng.random() < 0.5:
                prompt = prompt[:rng.randint(8, len(prompt))]
            prompt += client.tokenize(rng.choice(SUFFIXES), add_bos=False)
        else:
            prompt = client.tokenize(rng.choice(SUFFIXES))
        req = {"id": i, "prompt": prompt, "priority": rng.choice([0, 1, 2]), "kind": "generate",
               "cancel": rng.random() < 0.1}
        if rng.random() < 0.06:
            req["kind"] = "score"
            reqs.append(req)
            continue
        s = {"max_tokens": rng.choice([1, 4, 16, 32, 48]), "logprobs": TOP}
        if rng.random() < 0.5:
            s["temperature"] = 0.0
            if rng.random() < 0.25:
                s["presence_penalty"] = 0.5
                s["frequency_penalty"] = 0.4
        else:
            s.update(temperature=rng.choice([0.8, 1.0]), top_k=SEEDED_TOP_K, seed=rng.randint(0, 2 ** 40))
        if rng.random() < 0.25:
            s["n"] = rng.choice([2, 3])
        if rng.random() < 0.25:
            s["stop"] = rng.sample(["\n", ",", "the", ":"], rng.randint(1, 2))
        if rng.random() < 0.08:
            s["min_tokens"] = min(s["max_tokens"], 3)
        if rng.random() < 0.08:
            s["ignore_eos"] = True
        r = rng.random()
        if r < 0.04:
            s["response_format"] = "json_object"
        elif r < 0.08:
            s["guided_choice"] = ["yes", "no", "perchance"]
        req["sampling"] = s
        reqs.append(req)
    return reqs


def run(client, req, use_priority):
    """One request's answer: per choice its ids, text, logprobs (token, value, alternatives), finish,
    stop reason and usage, and what was wrong with its stream."""
    out = {"error": None, "cancelled": False, "choices": {}, "stream_problems": []}
    try:
        if req["kind"] == "score":
            p = req["prompt"]
            r = client.score(p[:len(p) // 2], p[len(p) // 2:])
            out["score"] = list(r.logprobs)
            return out
        chunks = 0
        it = client.generate(token_ids=req["prompt"], priority=req["priority"] if use_priority else 0, **req["sampling"])
        for chunk in it:
            chunks += 1
            c = out["choices"].setdefault(chunk.index, {"ids": [], "text": "", "lps": [], "finish": None,
                                                        "stop_reason": None, "usage": None})
            if c["finish"] is not None:
                out["stream_problems"].append(f"choice {chunk.index}: a chunk after its finish")
            c["ids"] += chunk.token_ids
            c["text"] += chunk.text
            c["lps"] += [(lp.logprob, [(t.token_id, t.logprob) for t in lp.top]) for lp in chunk.logprobs]
            if chunk.finish_reason:
                c["finish"] = chunk.finish_reason
                which = chunk.WhichOneof("stop_reason")
                c["stop_reason"] = getattr(chunk, which) if which else None
            if chunk.HasField("usage"):
                c["usage"] = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            if use_priority and req["cancel"]:
                out["cancelled"] = True
                it.close()
                break
    except grpc.RpcError as e:
        out["error"] = f"{e.code()}: {e.details()}"
    return out


def near_tie(sampling, ids, lps, k):
    """Whether the reference's pick at position k (its ids and logprobs) was within float rounding of
    another token, by its processed logits (greedy) or the uniform draw (seeded)."""
    alternatives = lps[k][1]
    if sampling.get("temperature", 1.0) == 0:
        counts = {}
        for t in ids[:k]:
            counts[t] = counts.get(t, 0) + 1
        pen = [lp - (sampling.get("presence_penalty", 0) if counts.get(t) else 0)
               - sampling.get("frequency_penalty", 0) * counts.get(t, 0) for t, lp in alternatives]
        pen.sort(reverse=True)
        return len(pen) > 1 and pen[0] - pen[1] < 1e-3
    # Seeded: the draw of completion i (seed + i) at step k against the top-k's cumulative masses,
    # heavier first (ties to the lower id).
    temperature = sampling["temperature"]
    top = sorted(alternatives[:SEEDED_TOP_K], key=lambda a: (-a[1], a[0]))
    weights = [math.exp((lp - top[0][1]) / temperature) for _, lp in top]
    total = sum(weights)
    u = uniform_draw(sampling["seed_i"], k)
    running = 0.0
    for w in weights[:-1]:
        running += w / total
        if abs(running - u) < 1e-3:
            return True
    return False


def stop(cluster):
    """Ctrl-C to the launcher (a clean shutdown), then whatever is left killed."""
    try:
        cluster.proc.send_signal(signal.SIGINT)
        cluster.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    finally:
        cluster.kill_everything()


class MixedLoadMatchesRequestsAlone(unittest.TestCase):
    def test_mixed_load_matches_one_at_a_time_on_one_rank(self):
        load = LaunchedCluster(["--np", "3", "--worker-arg=--kv-tokens=320", "--worker-arg=--max-batch-tokens=16",
                                "--coordinator-arg=--scheduling-policy=priority"])
        load.start_or_kill()
        try:
            client = MoeClient(load.address, timeout=120)
            reqs = make_requests(client, 130, seed=11)
            with ThreadPoolExecutor(64) as pool:
                got = list(pool.map(lambda r: run(client, r, True), reqs))
            deadline = time.monotonic() + 60
            while True:
                st = client.stats()
                busy = (st.requests_running, st.requests_waiting,
                        [(r.running_sequences, r.kv_blocks_used) for r in st.ranks])
                if busy == (0, 0, [(0, 0)] * 3) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self.assertEqual(busy, (0, 0, [(0, 0)] * 3), "the cluster is not idle after the load")
            preemptions = sum(r.preemptions for r in st.ranks)
            self.assertGreater(preemptions, 0, "the load should have preempted sequences")
            client.close()
        finally:
            stop(load)

        ref_cluster = LaunchedCluster(["--np", "1"])
        ref_cluster.start_or_kill()
        try:
            client = MoeClient(ref_cluster.address, timeout=120)
            ref = [run(client, r, False) for r in reqs]
            client.close()
        finally:
            stop(ref_cluster)

        ties = []
        for req, g, w in zip(reqs, got, ref):
            tag = f"request {req['id']} ({req.get('sampling')}, priority {req['priority']})"
            self.assertIsNone(w["error"], tag)
            self.assertIsNone(g["error"], tag)
            self.assertEqual(g["stream_problems"], [], tag)
            if req["kind"] == "score":
                self.assertEqual(len(g["score"]), len(w["score"]), tag)
                for x, y in zip(g["score"], w["score"]):
                    self.assertAlmostEqual(x, y, delta=1e-3, msg=tag)
                continue
            n = req["sampling"].get("n", 1)
            self.assertEqual(sorted(w["choices"]), list(range(n)), tag)
            if not g["cancelled"]:
                self.assertEqual(sorted(g["choices"]), list(range(n)), tag)
            for i, gc in g["choices"].items():
                wc = w["choices"][i]
                what = f"{tag}, choice {i}"
                k = next((j for j, (x, y) in enumerate(zip(gc["ids"], wc["ids"])) if x != y), None)
                if k is not None:
                    sampling = dict(req["sampling"], seed_i=req["sampling"].get("seed", 0) + i)
                    self.assertTrue(near_tie(sampling, wc["ids"], wc["lps"], k),
                                    f"{what}: token {k} is {gc['ids'][k]}, alone {wc['ids'][k]} (no near tie): "
                                    f"{gc['ids']} against {wc['ids']}")
                    ties.append(what)
                    continue
                if g["cancelled"]:
                    self.assertLessEqual(len(gc["ids"]), len(wc["ids"]), what)
                    continue
                self.assertEqual(gc["ids"], wc["ids"], what)
                self.assertEqual((gc["text"], gc["finish"], gc["stop_reason"], gc["usage"]),
                                 (wc["text"], wc["finish"], wc["stop_reason"], wc["usage"]), what)
                for (x, _), (y, _) in zip(gc["lps"], wc["lps"]):
                    self.assertAlmostEqual(x, y, delta=1e-3, msg=what)
        print(f"{len(reqs)} requests, {preemptions} preemptions, near ties taken the other way: {ties}",
              file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
