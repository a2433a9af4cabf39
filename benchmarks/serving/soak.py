#!/usr/bin/env python3
"""Soak audit: a 2-rank cluster (deploy/launch-cluster.sh, with the OpenAI/TGI front) driven by
rounds of varied requests, valid and refused, over gRPC and HTTP, with each process's VmRSS,
thread count, open fds and the /metrics series counts printed after every round. A leak grows
with the requests, round after round; allocator noise levels off after the first.

Not a ctest test (it runs for minutes). Environment as the Python e2e tests': MOE_BUILD_DIR,
MOE_SOURCE_DIR, MOE_PYTHON_PROTO_DIR (the python protos target's output). Usage:
  soak.py [--rounds 3] [--requests 600] [--concurrency 6] [--json OUT] [--stored-only]
"""

import argparse
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("MOE_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "support"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "clients", "python"))

from launched_cluster import LaunchedCluster, read_ports_file, wait_until_idle, worker_pid  # noqa: E402

import grpc  # noqa: E402
from moe_client import MoeClient, make_prompt, make_sampling  # noqa: E402
from moe.v1 import inference_pb2  # noqa: E402

CHAT_TEMPLATE = os.path.join(SOURCE_DIR, "tests", "data", "chat_templates", "mistralai-Mixtral-8x7B-Instruct-v0.1.jinja")
PROMPTS = ["ROMEO:", "JULIET:\nO", "First Citizen:\nBefore we proceed", "KING HENRY:", "To be, or not",
           "HAMLET:\nWhat", "MACBETH:\nIs this a dagger"]


def proc_figures(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def series_count(url):
    """How many samples (series) a Prometheus text page holds: a label set per request would grow it."""
    with urllib.request.urlopen(url, timeout=30) as r:
        text = r.read().decode()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return len(lines)


class Driver:
    def __init__(self, address, http_base, seed):
        self.address = address
        self.base = http_base
        self.channel = grpc.insecure_channel(address)
        from moe.v1 import inference_pb2_grpc
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.client = MoeClient(address, timeout=60)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {}
        self.unexpected = []
        self.serial = 0
        self.stored = False

    def note(self, kind, ok, detail=""):
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if not ok:
                self.unexpected.append(f"{kind}: {detail}"[:300])

    def rid(self, kind):
        with self.lock:
            self.serial += 1
            return f"soak-{kind}-{self.serial}-{self.rng.getrandbits(32):08x}"

    # --- gRPC -----------------------------------------------------------------------------------
    def gen(self, kind, i, timeout=60, cancel_after=None, **sampling):
        req = inference_pb2.GenerateRequest(request_id=self.rid(kind), prompt=make_prompt(PROMPTS[i % len(PROMPTS)]),
                                            sampling=make_sampling(**sampling), priority=i % 3,
                                            cache_salt=f"salt{i % 5}" if i % 2 else "")
        call = self.stub.Generate(req, timeout=timeout)
        got = 0
        try:
            for _ in call:
                got += 1
                if cancel_after is not None and got >= cancel_after:
                    call.cancel()
            return True, got
        except grpc.RpcError as e:
            return e.code(), str(e.details())

    def grpc_request(self, i):
        k = i % 16
        if k == 0:
            r = self.gen("greedy", i, max_tokens=16, temperature=0)
            self.note("gen_greedy", r[0] is True, r)
        elif k == 1:
            r = self.gen("seeded", i, max_tokens=24, temperature=0.8, seed=i, top_p=0.9, top_k=20)
            self.note("gen_seeded", r[0] is True, r)
        elif k == 2:
            r = self.gen("n", i, max_tokens=12, temperature=0.7, n=3, seed=i)
            self.note("gen_n3", r[0] is True, r)
        elif k == 3:
            r = self.gen("stop", i, max_tokens=32, temperature=0.5, seed=i, stop=["\n", " the", f"x{i}"])
            self.note("gen_stop", r[0] is True, r)
        elif k == 4:
            r = self.gen("json", i, max_tokens=24, temperature=0, response_format="json_object")
            self.note("gen_json_object", r[0] is True, r)
        elif k == 5:  # a distinct schema each time: per-schema caches must stay bounded
            schema = {"type": "object", "properties": {f"k{i}": {"type": "integer"}}, "required": [f"k{i}"]}
            fmt = {"type": "json_schema", "json_schema": {"schema": schema}}
            r = self.gen("schema", i, max_tokens=16, temperature=0, response_format=fmt)
            self.note("gen_json_schema", r[0] is True, r)
        elif k == 6:
            r = self.gen("logprobs", i, max_tokens=8, temperature=0, logprobs=5, prompt_logprobs=2)
            self.note("gen_logprobs", r[0] is True, r)
        elif k == 7:
            r = self.gen("cancel", i, max_tokens=200, temperature=0.9, seed=i, ignore_eos=True, cancel_after=2)
            self.note("gen_cancelled", r[0] in (True, grpc.StatusCode.CANCELLED), r)  # True: it ended first
        elif k == 8:
            r = self.gen("deadline", i, timeout=0.05, max_tokens=200, temperature=0.9, seed=i, ignore_eos=True)
            self.note("gen_deadline", r[0] in (True, grpc.StatusCode.DEADLINE_EXCEEDED), r)
        elif k == 9:
            res = self.client.score_many([(PROMPTS[i % 7], " and"), (PROMPTS[(i + 1) % 7], " the king")])
            self.note("score", len(res) == 2)
        elif k == 10:
            res = self.client.score_rolling(PROMPTS[i % 7] + " my lord", top_logprobs=2)
            self.note("score_rolling", res is not None)
        elif k == 11:
            ids = self.client.tokenize(PROMPTS[i % 7] + str(i))
            self.note("tokenize_detokenize", bool(self.client.detokenize(ids)))
        elif k == 12:
            self.client.cluster_info()
            self.client.stats()
            self.client.model_info()
            self.note("info_stats", True)
        elif k == 13:  # refused: top_p out of range, too many tokens, a bad regex, a bad grammar
            bad = [dict(top_p=1.5), dict(max_tokens=10 ** 8), dict(guided_regex=f"(?<=a)b{i}"),
                   dict(guided_grammar=f"root ::= undefined{i}")][i % 4]
            r = self.gen("bad", i, **bad)
            self.note("grpc_refused", r[0] == grpc.StatusCode.INVALID_ARGUMENT, r)
        elif k == 14:
            r = self.gen("regex", i, max_tokens=12, temperature=0, guided_regex=f"(yes|no){i % 50}")
            self.note("gen_regex", r[0] is True, r)
        else:
            r = self.gen("choice", i, max_tokens=8, temperature=0.5, seed=i, guided_choice=["aye", "nay", f"c{i}"])
            self.note("gen_choice", r[0] is True, r)

    # --- HTTP -----------------------------------------------------------------------------------
    def http(self, path, body=None, method=None, raw=None, headers=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json", "X-Request-Id": self.rid("http")}
        h.update(headers or {})
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def http_request(self, i):
        k = i % 14
        p = PROMPTS[i % len(PROMPTS)]
        if k == 0:
            s, _ = self.http("/v1/completions", {"prompt": p, "max_tokens": 12, "temperature": 0, "logprobs": 2})
            self.note("http_completions", s == 200, s)
        elif k == 1:
            s, b = self.http("/v1/completions", {"prompt": p, "max_tokens": 12, "stream": True, "seed": i, "n": 2})
            self.note("http_completions_stream", s == 200 and b.rstrip().endswith(b"[DONE]"), s)
        elif k == 2:
            s, _ = self.http("/v1/chat/completions", {"messages": [{"role": "user", "content": p}], "max_tokens": 12,
                                                     "seed": i, "stop": ["\n"]})
            self.note("http_chat", s == 200, s)
        elif k == 3:
            s, _ = self.http("/v1/chat/completions", {"messages": [{"role": "user", "content": p}], "max_tokens": 16,
                                                     "stream": True, "response_format": {"type": "json_object"}})
            self.note("http_chat_stream_json", s == 200, s)
        elif k == 4:  # stored response, read back, its items, chained, deleted
            s, b = self.http("/v1/responses", {"input": p, "max_output_tokens": 8})
            ok = s == 200
            if ok:
                rid = json.loads(b)["id"]
                s1, _ = self.http(f"/v1/responses/{rid}", method="GET")
                s2, _ = self.http(f"/v1/responses/{rid}/input_items", method="GET")
                s3, b3 = self.http("/v1/responses", {"input": "More.", "previous_response_id": rid, "max_output_tokens": 4})
                ok = s1 == 200 and s2 == 200 and s3 == 200
                if i % 2 == 0:
                    s4, _ = self.http(f"/v1/responses/{rid}", method="DELETE")
                    s5, _ = self.http(f"/v1/responses/{rid}", method="GET")
                    ok = ok and s4 == 200 and s5 == 404
            self.note("http_responses_stored", ok, (s, b[:200]))
        elif k == 5:
            s, b = self.http("/v1/responses", {"input": p, "max_output_tokens": 8, "background": True})
            ok = s == 200
            if ok:
                rid = json.loads(b)["id"]
                for _ in range(600):
                    s1, b1 = self.http(f"/v1/responses/{rid}", method="GET")
                    if s1 != 200 or json.loads(b1)["status"] not in ("queued", "in_progress"):
                        break
                    time.sleep(0.05)
                ok = s1 == 200
            self.note("http_responses_background", ok, s)
        elif k == 6:
            s, _ = self.http("/v1/responses", {"input": p, "max_output_tokens": 8, "store": False, "stream": True})
            self.note("http_responses_stream_nostore", s == 200, s)
        elif k == 7:
            s, _ = self.http("/generate", {"inputs": p, "parameters": {"max_new_tokens": 10, "details": True, "seed": i}})
            self.note("tgi_generate", s == 200, s)
        elif k == 8:
            s, _ = self.http("/generate_stream", {"inputs": p, "parameters": {"max_new_tokens": 10, "do_sample": True}})
            self.note("tgi_generate_stream", s == 200, s)
        elif k == 9:
            s, _ = self.http("/metrics", method="GET")
            s2, _ = self.http("/v1/models", method="GET")
            s3, _ = self.http("/tokenize", {"prompt": p})
            s4, _ = self.http("/health", method="GET")
            self.note("http_misc", (s, s2, s3, s4) == (200, 200, 200, 200), (s, s2, s3, s4))
        elif k == 10:  # refused: broken JSON, a bad parameter, an unknown route, a wrong method
            cases = [("/v1/completions", dict(raw=b"{not json"), 400),
                     ("/v1/completions", dict(body={"prompt": p, "temperature": -3}), 400),
                     (f"/v1/nowhere/{i}", dict(body={}), 404),
                     ("/v1/completions", dict(method="GET"), 405),
                     (f"/v1/responses/resp_missing{i}", dict(method="GET"), 404),
                     ("/v1/chat/completions", dict(body={"messages": "nope"}), 400),
                     ("/v1/models", dict(method=f"BREW{i}"), None)]  # a made-up method: no metrics label of its own
            path, kw, want = cases[i % len(cases)]
            s, _ = self.http(path, **kw)
            self.note("http_refused", s == want if want else s >= 400, (path, s, want))
        elif k == 11:  # a streamed completion the client walks away from
            req = urllib.request.Request(self.base + "/v1/completions", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"prompt": p, "max_tokens": 200, "ignore_eos": True,
                                                          "stream": True}).encode())
            with urllib.request.urlopen(req, timeout=60) as r:
                r.readline()
            self.note("http_stream_abandoned", True)
        elif k == 12:
            s, _ = self.http("/v1/completions", {"prompt": p, "max_tokens": 8, "best_of": 2, "n": 1, "use_beam_search": True})
            self.note("http_beam", s in (200, 400), s)
        else:
            s, _ = self.http("/v1/completions", {"prompt": p, "max_tokens": 6, "echo": True, "logprobs": 1,
                                                 "user": f"user{i}"})
            self.note("http_completions_echo", s == 200, s)

    def stored_only(self, i):
        """A stored response kept (never deleted), its input ~1 KB: the store must stay bounded."""
        text = " ".join(PROMPTS[(i + j) % len(PROMPTS)] for j in range(40)) + f" {i}"
        s, b = self.http("/v1/responses", {"input": text[:1000], "max_output_tokens": 4, "temperature": 0})
        self.note("http_responses_kept", s == 200, (s, b[:200]))

    def one(self, i):
        try:
            if self.stored:
                self.stored_only(i)
            elif i % 2:
                self.http_request(i // 2)
            else:
                self.grpc_request(i // 2)
        except Exception as e:  # noqa: BLE001 -- a soak counts every surprise and goes on
            self.note("exception", False, repr(e))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--json", default="")
    ap.add_argument("--stored-only", action="store_true", help="only /v1/responses answers that stay stored")
    args = ap.parse_args()

    ports_file = tempfile.mktemp(prefix="moe_soak_ports_")
    cluster = LaunchedCluster(["--openai-listen", "127.0.0.1:0", "--openai-arg", "--chat-template=" + CHAT_TEMPLATE,
                               "--metrics-listen", "127.0.0.1:0", "--ports-file", ports_file,
                               "--coordinator-arg=--scheduling-policy=priority"])
    cluster.start_or_kill()
    try:
        ports = read_ports_file(ports_file)
        coord_metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"
        base = "http://" + cluster.openai_address
        pids = {"coordinator": cluster.coordinator_pid, "openai": cluster.openai_pid,
                "rank0": worker_pid(cluster.cluster_port, 0), "rank1": worker_pid(cluster.cluster_port, 1)}
        driver = Driver(cluster.address, base, 46)
        driver.stored = args.stored_only
        figures = []

        def sample(label):
            row = {"after": label, "procs": {name: proc_figures(pid) for name, pid in pids.items()},
                   "coordinator_series": series_count(coord_metrics), "openai_series": series_count(base + "/metrics")}
            figures.append(row)
            print(json.dumps(row), flush=True)

        sample("start")
        n = 0
        for rnd in range(1, args.rounds + 1):
            t0 = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(driver.one, range(n, n + args.requests)))
            n += args.requests
            wait_until_idle(driver.client, 120, f"round {rnd}")
            time.sleep(2)
            print(f"round {rnd}: {args.requests} requests in {time.monotonic() - t0:.0f} s", flush=True)
            sample(f"round {rnd}")
        print("counts:", json.dumps(driver.counts, sort_keys=True))
        print(f"unexpected ({len(driver.unexpected)}):")
        for u in driver.unexpected[:40]:
            print("  ", u)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"figures": figures, "counts": driver.counts, "unexpected": driver.unexpected}, f, indent=1)
    finally:
        cluster.proc.send_signal(2)
        try:
            cluster.proc.wait(timeout=60)
        except Exception:  # noqa: BLE001
            cluster.kill_everything()


if __name__ == "__main__":
    main()
