#!/usr/bin/python3
"""End-to-end test of moe-openai-server, started by deploy/launch-cluster.sh --openai-listen.

A 2-rank cluster on the default model with its OpenAI-compatible HTTP front, driven with plain HTTP
(urllib, as any OpenAI client would send it): greedy completions carry samples.json's text
(transformers' greedy continuations), whole or streamed as server-sent events; sampled and n > 1
completions equal what the gRPC API gives for the same request; every error is OpenAI's JSON shape
with the right HTTP status and the offending parameter; a client that leaves a stream cancels its
request (the KV blocks come back); and SIGTERM stops the front and the cluster cleanly. Chat
completions (the front started with Mixtral-8x7B-Instruct's chat template): the conversation's
prompt ids are transformers' (apply_chat_template, then its tokenizer: tests/data/openai/
chat_golden.json), and the answer is the greedy continuation of those ids, whole or streamed in
OpenAI's chunk shape.

Environment (CTest sets them): MOE_BUILD_DIR, MOE_PYTHON_PROTO_DIR, MOE_SOURCE_DIR.
"""

import contextlib
import http.client
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

from launched_cluster import (BUILD_DIR, MODEL_DIR, SOURCE_DIR, STOP_TIMEOUT_S, LaunchedCluster,  # noqa: E402
                              load_samples, pid_exists, wait_until_idle)
from sentencepiece_pieces import sentencepiece_pieces  # noqa: E402

os.environ.setdefault("MOE_PYTHON_PROTO_DIR", os.path.join(BUILD_DIR, "python"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "clients", "python"))

import grpc  # noqa: E402

from moe_client import MoeClient  # noqa: E402

MODEL = "shakespeare-moe"
CHAT_TEMPLATE = os.path.join(SOURCE_DIR, "tests", "data", "chat_templates", "mistralai-Mixtral-8x7B-Instruct-v0.1.jinja")
with open(os.path.join(SOURCE_DIR, "tests", "data", "openai", "chat_golden.json")) as f:
    CHAT_GOLDEN = json.load(f)
# transformers' ids and character offsets of texts (tests/data/tokenizers/make_offsets_golden.py),
# the default model's tokenizer without BOS (its tokenizer_config.json adds none).
with open(os.path.join(SOURCE_DIR, "tests", "data", "tokenizers", "offsets_golden.json")) as f:
    OFFSETS_GOLDEN = [c for c in json.load(f)["models"]["shakespeare-moe"] if not c["add_bos"]]


OPENAI_BIN = os.path.join(BUILD_DIR, "coordinator", "openai", "moe-openai-server")


@contextlib.contextmanager
def own_front(test, coordinator, *args, env=None, preexec_fn=None):
    """A moe-openai-server of the test's own on the cluster (port 0), with `args`: yields its port,
    its "listening" line and its pid; at the end SIGTERM, which it must answer with exit status 0."""
    proc = subprocess.Popen([OPENAI_BIN, "--coordinator", coordinator, "--listen", "127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=preexec_fn)
    try:
        line = next((x for x in proc.stdout if "listening on port" in x), None)
        test.assertIsNotNone(line, "moe-openai-server did not listen")
        yield int(line.split("listening on port")[1].split(",")[0]), line, proc.pid
    finally:
        proc.terminate()
        test.assertEqual(proc.wait(timeout=30), 0)
        proc.stdout.close()


class OpenAiServerEndToEnd(unittest.TestCase):
    cluster = None

    @classmethod
    def setUpClass(cls):
        cls.samples = load_samples()
        cls.cluster = LaunchedCluster(["--openai-listen", "127.0.0.1:0", "--openai-arg", "--chat-template=" + CHAT_TEMPLATE,
                                       "--openai-arg=--trust-request-chat-template", "--metrics-listen", "127.0.0.1:0"])
        cls.cluster.start_or_kill()
        cls.base = "http://" + cls.cluster.openai_address
        cls.grpc = MoeClient(cls.cluster.address, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.grpc.close()
        cls.cluster.kill_everything()

    def call(self, path, body=None, raw=None, method=None, base=None, headers=(), raw_answer=False):
        """(HTTP status, parsed JSON body) of one request (to `base`, by default the cluster's front);
        with raw_answer the body's text instead (a stream's events)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request((base or self.base) + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **dict(headers)})
        read = (lambda r: r.read().decode()) if raw_answer else (lambda r: json.loads(r.read()))
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, read(r)
        except urllib.error.HTTPError as e:
            return e.code, read(e)

    def stream(self, body, path="/v1/completions"):
        """The JSON events of a streamed completion, up to [DONE] (which must come last)."""
        req = urllib.request.Request(self.base + path, data=json.dumps(dict(body, stream=True)).encode(),
                                     headers={"Content-Type": "application/json"})
        events = []
        with urllib.request.urlopen(req, timeout=60) as r:
            self.assertEqual(r.headers["Content-Type"], "text/event-stream")
            for line in r:
                line = line.decode().rstrip("\n")
                if not line:
                    continue
                self.assertTrue(line.startswith("data: "), line)
                if line == "data: [DONE]":
                    self.assertEqual(r.read(), b"\n", "[DONE] ends the stream (its event's blank line only)")
                    return events
                events.append(json.loads(line[len("data: "):]))
        self.fail("the stream ended without [DONE]")

    def test_completions_max_tokens_null_takes_what_the_context_leaves(self):
        # vLLM reads "max_tokens": null as None: each prompt of the batch may run to the end of the
        # context (absent, it is OpenAI's 16). Prompts 4 and 7 tokens short of the 4096 positions.
        prompts = [[1] + [300 + i % 200 for i in range(4091)], [1] + [700 + i % 50 for i in range(4088)]]
        body = {"prompt": prompts, "max_tokens": None, "temperature": 0, "ignore_eos": True}
        status, answer = self.call("/v1/completions", body)
        self.assertEqual(status, 200, answer)
        by_index = sorted(answer["choices"], key=lambda c: c["index"])
        self.assertEqual([c["finish_reason"] for c in by_index], ["length", "length"], answer)
        self.assertEqual(answer["usage"]["completion_tokens"], 4 + 7, answer)
        events = self.stream(dict(body, stream_options={"include_usage": True}))
        self.assertEqual(events[-1]["usage"]["completion_tokens"], 4 + 7, events[-1])
        ends = {c["index"]: c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")}
        self.assertEqual(ends, {0: "length", 1: "length"})
        status, answer = self.call("/v1/completions", {"prompt": prompts[:1], "temperature": 0})
        self.assertEqual(status, 400, "absent: OpenAI's 16, past the context")
        self.assertIn("max_tokens", answer["error"]["message"])

    def test_a_models_and_health(self):
        status, body = self.call("/v1/models")
        self.assertEqual(status, 200)
        self.assertEqual([m["id"] for m in body["data"]], [MODEL])
        self.assertEqual(body["data"][0]["max_model_len"], 4096)
        # OpenAI's retrieve (the openai SDK's models.retrieve): the list's entry; another name is
        # OpenAI's 404 naming the parameter (the SDK raises NotFoundError with it).
        listed = body["data"][0]
        self.assertEqual(self.call("/v1/models/" + MODEL), (200, listed))
        status, err = self.call("/v1/models/nope")
        self.assertEqual((status, err["error"]["param"], err["error"]["type"]), (404, "model", "NotFoundError"), err)
        self.assertIn("`nope` does not exist", err["error"]["message"])
        self.assertEqual(self.call("/v1/models/" + MODEL, {})[0], 405, "GET only")
        status, body = self.call("/health")
        self.assertEqual((status, body["status"]), (200, "SERVING"))
        self.assertEqual(self.call("/ping"), (200, {"status": "SERVING"}))  # vLLM's (SageMaker's) name
        self.assertEqual(self.call("/ping", {})[0], 200)  # POST too, as vLLM
        # vLLM's GET /version: the project's version, as CMakeLists.txt declares it.
        with open(os.path.join(SOURCE_DIR, "CMakeLists.txt")) as f:
            declared = re.search(r"project\([^)]*VERSION ([0-9.]+)", f.read()).group(1)
        self.assertEqual(self.call("/version"), (200, {"version": declared}))

    def test_a1_served_model_names_are_all_served(self):
        """vLLM's --served-model-name with several names: /v1/models lists each, a request may give any,
        answers name the first; another name is 404 naming those served. --model-name repeats the same way."""
        for args in (["--served-model-name", "alpha", "beta", "--threads", "8"],
                     ["--model-name", "alpha", "--model-name=beta"]):
            with own_front(self, self.cluster.address, *args) as (port, line, _):
                base = "http://127.0.0.1:%d" % port
                self.assertIn("alpha", line)
                status, body = self.call("/v1/models", base=base)
                self.assertEqual([m["id"] for m in body["data"]], ["alpha", "beta"])
                for name in ("alpha", "beta", None):
                    req = {"prompt": "ROMEO:", "max_tokens": 2} if name is None else {"model": name, "prompt": "ROMEO:", "max_tokens": 2}
                    status, body = self.call("/v1/completions", req, base=base)
                    self.assertEqual((status, body["model"]), (200, "alpha"), body)
                status, err = self.call("/v1/completions", {"model": MODEL, "prompt": "x"}, base=base)
                self.assertEqual(status, 404, err)
                self.assertIn("`alpha`, `beta`", err["error"]["message"])
        # A name with a slash (a Hugging Face id), as the openai SDK sends it (%2F) or written out.
        with own_front(self, self.cluster.address, "--served-model-name", "org/model") as (port, _, _):
            base = "http://127.0.0.1:%d" % port
            for path in ("/v1/models/org%2Fmodel", "/v1/models/org/model"):
                status, body = self.call(path, base=base)
                self.assertEqual((status, body.get("id"), body.get("object")), (200, "org/model", "model"), (path, body))
        r = subprocess.run([OPENAI_BIN, "--coordinator", self.cluster.address, "--served-model-name="], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_a2_metrics_on_the_api_port(self):
        """GET /metrics on the front answers the coordinator's Prometheus endpoint (the launcher
        passes it), as vLLM serves its metrics on the API port: a completion's tokens show in it,
        under the project's, vLLM's and TGI's names (a refused request too, in TGI's)."""
        req = urllib.request.Request(self.base + "/metrics")
        with urllib.request.urlopen(req, timeout=30) as r:
            self.assertTrue(r.headers["Content-Type"].startswith("text/plain"), r.headers["Content-Type"])
            before = r.read().decode()
        self.assertIn("moe_num_requests_running", before)
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0})
        self.assertEqual(status, 200, body)
        with self.assertRaises(grpc.RpcError) as refused:  # the coordinator refuses it: a TGI validation failure
            self.grpc.generate_full("ROMEO:", max_tokens=5, temperature=-1.0)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

        def generated(text):
            return sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("moe_generation_tokens_total"))

        with urllib.request.urlopen(req, timeout=30) as r:
            after = r.read().decode()
        self.assertEqual(generated(after) - generated(before), 5)

        # vLLM's names for the same, labelled model_name: a dashboard made for vLLM reads them.
        def sample(text, name, labels=None):
            for line in text.splitlines():
                if not line.startswith(name + "{") and not line.startswith(name + " "):
                    continue
                if labels is None or all('%s="%s"' % kv in line for kv in labels.items()):
                    return float(line.split()[-1])
            self.fail("%s%s is not in /metrics" % (name, labels or ""))

        model = {"model_name": MODEL}
        self.assertEqual(sample(after, "vllm:generation_tokens_total", model) - sample(before, "vllm:generation_tokens_total", model), 5)
        self.assertEqual(sample(after, "vllm:prompt_tokens_total", model), sample(after, "moe_prompt_tokens_total"))
        for vllm, ours in (("vllm:num_requests_running", "moe_num_requests_running"),
                           ("vllm:num_requests_waiting", "moe_num_requests_waiting"),
                           ("vllm:kv_cache_usage_perc", "moe_kv_cache_usage_ratio")):
            self.assertEqual(sample(after, vllm, model), sample(after, ours), vllm)
        length = sample(after, "vllm:request_success_total", dict(model, finished_reason="length"))
        self.assertEqual(length, sample(after, "moe_request_success_total", {"finish_reason": "length"}))
        self.assertEqual(sample(after, "vllm:e2e_request_latency_seconds_count", model),
                         sample(after, "moe_e2e_request_latency_seconds_count"))
        self.assertIn("# TYPE vllm:time_to_first_token_seconds histogram", after)

        # TGI's names where the coordinator has their figures: per request, refusals counted by kind.
        def delta(name, labels=None):
            return sample(after, name, labels) - sample(before, name, labels)

        self.assertEqual(delta("tgi_request_count"), 2)
        self.assertEqual(delta("tgi_request_success"), 1)
        self.assertEqual(delta("tgi_request_failure", {"err": "validation"}), 1)
        self.assertEqual(delta("tgi_request_failure", {"err": "generation"}), 0)
        self.assertEqual(delta("tgi_request_generated_tokens_sum"), 5)
        self.assertEqual(delta("tgi_request_input_length_count"), 1)
        self.assertEqual(delta("tgi_request_input_length_sum"), len(self.samples["ROMEO:"]["prompt_ids"]))
        self.assertEqual(delta("tgi_request_duration_count"), 1)
        self.assertEqual(sample(after, "tgi_queue_size"), sample(after, "moe_num_requests_waiting"))
        self.assertEqual(sample(after, "tgi_batch_current_size"), sample(after, "moe_num_requests_running"))
        self.assertEqual(delta("tgi_request_queue_duration_count"), 1)
        # vLLM's per-request figures: the completion's tokens, its max_tokens, and its phases (queued
        # until its rank's first step, prefill to its first token, decode to its last), which lie
        # within its e2e latency.
        self.assertEqual(delta("vllm:request_generation_tokens_sum", model), 5)
        self.assertEqual(delta("vllm:request_prompt_tokens_sum", model), len(self.samples["ROMEO:"]["prompt_ids"]))
        self.assertEqual(delta("vllm:request_params_max_tokens_sum", model), 5)
        self.assertEqual(delta("vllm:request_params_n_sum", model), 1)
        self.assertEqual(delta("vllm:request_queue_time_seconds_count", model), 1)
        phase = {p: delta("vllm:request_%s_time_seconds_sum" % p, model) for p in ("queue", "prefill", "decode", "inference")}
        self.assertGreater(phase["decode"], 0, phase)
        self.assertGreater(phase["prefill"], 0, phase)
        self.assertAlmostEqual(phase["inference"], phase["prefill"] + phase["decode"], places=6)
        self.assertLessEqual(phase["queue"] + phase["inference"], delta("vllm:e2e_request_latency_seconds_sum", model) + 1e-3)
        self.assertEqual(delta("moe_request_generation_tokens_sum"), 5)
        with own_front(self, self.cluster.address) as (port, _, _):  # no --metrics-url: the front's own alone
            self.call("/v1/models", base="http://127.0.0.1:%d" % port)
            # A request is counted once its answer has gone (civetweb's end_request), so the client
            # may ask before: ask again until it shows (bounded).
            line = 'http_requests_total{handler="/v1/models",method="GET",status="2xx"} 1'
            deadline = time.monotonic() + 20
            while True:
                status, text = self.call("/metrics", base="http://127.0.0.1:%d" % port, raw_answer=True)
                self.assertEqual(status, 200, text)
                if line in text or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.assertIn(line, text)
            self.assertNotIn("vllm:", text)
        with own_front(self, self.cluster.address, "--metrics-url", "http://127.0.0.1:1/metrics") as (port, _, _):
            status, err = self.call("/metrics", base="http://127.0.0.1:%d" % port)
            self.assertEqual(status, 503, err)

    def test_a3_the_fronts_own_requests_in_vllms_http_metrics(self):
        """/metrics also carries the front's own request counts under the names vLLM's API server gives
        them (http_requests_total by route, method and status class, and the duration histograms): a
        completion the front refuses itself (its body), which never reaches the cluster, counts there
        beside an answered one; an unknown path counts as handler "none"; /metrics itself is not counted."""
        def count(text, labels):
            for line in text.splitlines():
                if line.startswith("http_requests_total{") and all('%s="%s"' % kv in line for kv in labels.items()):
                    return float(line.split()[-1])
            return 0.0

        def value(text, name):
            for line in text.splitlines():
                if line.startswith(name + "{") and 'handler="/v1/completions"' in line:
                    return float(line.split()[-1])
            return 0.0

        status, before = self.call("/metrics", raw_answer=True)
        self.assertEqual(status, 200, before)
        request = {"prompt": "ROMEO:", "max_tokens": 2, "temperature": 0}
        with urllib.request.urlopen(urllib.request.Request(self.base + "/v1/completions", data=json.dumps(request).encode(),
                                                           headers={"Content-Type": "application/json"}), timeout=60) as r:
            answer_bytes = int(r.headers["Content-Length"])
            self.assertEqual(len(r.read()), answer_bytes)
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": "many"})
        self.assertEqual(status, 400, body)
        status, body = self.call("/v1/no/such/route", {})
        self.assertEqual(status, 404, body)
        # The answer names what is served (the route list's own paths).
        self.assertIn("/v1/chat/completions, /v1/responses, /v1/responses/{id}, ", body["error"]["message"])
        self.assertIn("and TGI's /generate, /generate_stream, /info, /chat_tokenize, /)", body["error"]["message"])
        answered = {"handler": "/v1/completions", "method": "POST", "status": "2xx"}
        expected = ((answered, 1), (dict(answered, status="4xx"), 1), ({"handler": "none", "method": "POST", "status": "4xx"}, 1))
        # civetweb counts a request once it has closed its connection, which may come after the
        # client has read the answer: the scrape waits for the three.
        deadline = time.monotonic() + 10
        while True:
            status, after = self.call("/metrics", raw_answer=True)
            self.assertEqual(status, 200, after)
            if all(count(after, labels) - count(before, labels) >= want for labels, want in expected) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for labels, want in expected:
            self.assertEqual(count(after, labels) - count(before, labels), want, labels)
        self.assertIn("# TYPE http_request_duration_highr_seconds histogram", after)
        self.assertIn('http_request_duration_seconds_count{handler="/v1/completions",method="POST"}', after)
        self.assertNotIn('handler="/metrics"', after)
        self.assertIn("moe_num_requests_running", after, "the coordinator's metrics still there")
        # The size summaries take the Content-Length headers: both completions' bodies, the answer.
        self.assertEqual(value(after, "http_request_size_bytes_count") - value(before, "http_request_size_bytes_count"), 2)
        self.assertEqual(value(after, "http_request_size_bytes_sum") - value(before, "http_request_size_bytes_sum"),
                         len(json.dumps(request).encode()) + len(json.dumps({"prompt": "ROMEO:", "max_tokens": "many"}).encode()))
        grew = value(after, "http_response_size_bytes_sum") - value(before, "http_response_size_bytes_sum")
        self.assertGreaterEqual(grew, answer_bytes, "the answer's and the refusal's")

    def test_b_greedy_completions_carry_the_samples_text(self):
        for prompt, s in self.samples.items():
            n = len(s["greedy_ids"])
            status, body = self.call("/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": n,
                                                         "temperature": 0})
            self.assertEqual(status, 200, body)
            self.assertEqual(body["object"], "text_completion")
            self.assertEqual(body["choices"][0]["text"], s["greedy_text"][len(prompt):])
            self.assertEqual(body["usage"], {"prompt_tokens": len(s["prompt_ids"]), "completion_tokens": n,
                                             "total_tokens": len(s["prompt_ids"]) + n})
            # The same as token ids, streamed: the deltas add up to the text, the last names the reason.
            events = self.stream({"prompt": s["prompt_ids"], "max_tokens": n, "temperature": 0,
                                  "stream_options": {"include_usage": True}})
            text = "".join(c["text"] for e in events for c in e["choices"])
            self.assertEqual(text, s["greedy_text"][len(prompt):])
            self.assertEqual([c["finish_reason"] for e in events for c in e["choices"]][-1], "length")
            self.assertEqual(events[-1]["choices"], [])
            self.assertEqual(events[-1]["usage"]["completion_tokens"], n)
            self.assertEqual(len({e["id"] for e in events}), 1)

    def test_c_sampling_parameters_mean_what_the_grpc_api_does(self):
        params = dict(max_tokens=12, temperature=0.9, top_p=0.95, top_k=40, seed=5, presence_penalty=0.3,
                      frequency_penalty=0.2, repetition_penalty=1.1, min_tokens=3, logit_bias={"9": -5})
        status, body = self.call("/v1/completions", dict(params, prompt="JULIET:", n=3))
        self.assertEqual(status, 200, body)
        want = self.grpc.generate_choices("JULIET:", **dict(params, logit_bias={9: -5}, n=3))
        self.assertEqual([c["index"] for c in body["choices"]], [0, 1, 2])
        self.assertEqual([c["text"] for c in body["choices"]], [w.text for w in want])
        self.assertEqual(body["usage"]["completion_tokens"], sum(len(w.token_ids) for w in want))
        # A stop string ends the text before it, finish_reason "stop".
        full = self.samples["ROMEO:"]["greedy_text"][len("ROMEO:"):]
        stop = full[5:9]
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 40, "temperature": 0,
                                                     "stop": [stop]})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["text"], full[:full.find(stop)])
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")

    def test_c0b_beam_search_is_vllms_over_the_models_logprobs(self):
        """vLLM's use_beam_search: one beam ignoring EOS is the greedy continuation (samples.json); n beams are
        what vLLM's search (its published algorithm, written out here) finds over the gRPC API's top logprobs,
        best first, each choice's text its token ids' text."""
        s = self.samples["ROMEO:"]
        status, body = self.call("/v1/completions", {"prompt": s["prompt_ids"], "max_tokens": 10, "use_beam_search": True,
                                                     "ignore_eos": True, "temperature": 0, "return_token_ids": True})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["token_ids"], s["greedy_ids"][:10])
        self.assertTrue(s["greedy_text"][len("ROMEO:"):].startswith(body["choices"][0]["text"]))
        self.assertEqual(body["usage"]["completion_tokens"], 10)
        with open(os.path.join(MODEL_DIR, "config.json")) as f:
            eos = json.load(f)["eos_token_id"]
        eos = eos if isinstance(eos, list) else [eos]

        def reference(prompt, width, max_tokens, length_penalty):
            def score(beam):
                tokens, cum = beam[0], beam[1]
                return cum / (len(tokens) - (tokens[-1] in eos)) ** length_penalty
            live, complete = [(list(prompt), 0.0)], []
            for _ in range(max_tokens):
                extended = []
                for tokens, cum in live:
                    lp = self.grpc.generate_full(token_ids=tokens, max_tokens=1, logprobs=2 * width, temperature=0,
                                                 ignore_eos=True).logprobs[0]
                    candidates = [(t.token_id, t.logprob) for t in lp.top]
                    for token, logprob in candidates:
                        if token in eos:
                            complete.append((tokens, cum + logprob, "stop"))
                        else:
                            extended.append((tokens + [token], cum + logprob, "length"))
                live = sorted(extended, key=score, reverse=True)[:width]
                live = [(t, c) for t, c, _ in live]
            return sorted(complete + [(t, c, "length") for t, c in live], key=score, reverse=True)[:width]

        for prompt, width, max_tokens, penalty in (("JULIET:", 3, 6, 1.0), ("ROMEO: O", 2, 5, 0.0)):
            ids = self.grpc.tokenize(prompt)
            status, body = self.call("/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, "n": width,
                                                         "use_beam_search": True, "temperature": 0,
                                                         "length_penalty": penalty, "return_token_ids": True})
            self.assertEqual(status, 200, body)
            want = reference(ids, width, max_tokens, penalty)
            self.assertEqual([c["index"] for c in body["choices"]], list(range(width)))
            self.assertEqual([c["token_ids"] for c in body["choices"]], [t[len(ids):] for t, _, _ in want])
            self.assertEqual([c["finish_reason"] for c in body["choices"]], [r for _, _, r in want])
            for c in body["choices"]:
                self.assertEqual(c["text"], self.grpc.detokenize(c["token_ids"]))
            self.assertEqual(len({tuple(c["token_ids"]) for c in body["choices"]}), width, "distinct beams")
        # Chat too; and what beam search does not serve is refused naming it.
        status, body = self.call("/v1/chat/completions", {"messages": [{"role": "user", "content": "Speak!"}],
                                                          "max_tokens": 4, "n": 2, "use_beam_search": True})
        self.assertEqual(status, 200, body)
        self.assertEqual(len(body["choices"]), 2)
        for field, value in (("stream", True), ("logprobs", 1), ("stop", ["."]), ("n", 11)):
            status, err = self.call("/v1/completions", {"prompt": "x", "use_beam_search": True, field: value})
            self.assertEqual((status, err["error"]["param"]), (400, field), err)

    def test_c0p_prompt_tokens_details_count_the_prefix_cache(self):
        """vLLM's --enable-prompt-tokens-details: usage.prompt_tokens_details.cached_tokens is the prompt's
        tokens the rank's prefix cache held: none the first time a prompt comes, its whole blocks (16
        tokens each, leaving at least its last token to compute) the second time, as the gRPC API's usage
        says; whole, streamed and in chat. Without the flag usage has no details; the Responses API's
        input_tokens_details always carries the count."""
        prompt = "ROMEO: " + " ".join("word%d" % i for i in range(40))  # about a hundred tokens, unseen before
        ids = self.grpc.tokenize(prompt)
        want = (len(ids) - 1) // 16 * 16
        self.assertGreater(want, 0)
        with own_front(self, self.cluster.address, "--enable-prompt-tokens-details",
                       "--chat-template=" + CHAT_TEMPLATE) as (port, _, _):
            base = "http://127.0.0.1:%d" % port
            body = {"prompt": prompt, "max_tokens": 2, "temperature": 0}
            status, first = self.call("/v1/completions", body, base=base)
            self.assertEqual(status, 200, first)
            self.assertEqual(first["usage"]["prompt_tokens_details"], {"cached_tokens": 0})
            status, again = self.call("/v1/completions", body, base=base)
            self.assertEqual(again["usage"]["prompt_tokens_details"], {"cached_tokens": want}, again)
            self.assertEqual(self.grpc.generate_full(prompt, max_tokens=2, temperature=0).cached_prompt_tokens, want)
            events = self.call("/v1/completions", dict(body, stream=True, stream_options={"include_usage": True}),
                               base=base, raw_answer=True)[1]
            usage = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: {")][-1]["usage"]
            self.assertEqual(usage["prompt_tokens_details"], {"cached_tokens": want})
            messages = [{"role": "user", "content": prompt}]
            status, tokenized = self.call("/tokenize", {"messages": messages}, base=base)
            self.assertEqual(status, 200, tokenized)
            for want_chat in (0, (tokenized["count"] - 1) // 16 * 16):  # the template's text: unseen, then seen
                status, chat = self.call("/v1/chat/completions", {"messages": messages, "max_tokens": 1}, base=base)
                self.assertEqual(status, 200, chat)
                self.assertEqual(chat["usage"]["prompt_tokens"], tokenized["count"])
                self.assertEqual(chat["usage"]["prompt_tokens_details"], {"cached_tokens": want_chat}, chat)
        status, plain = self.call("/v1/completions", body)  # the shared front has no flag
        self.assertNotIn("prompt_tokens_details", plain["usage"])
        other = "JULIET: " + " ".join("name%d" % i for i in range(40))  # unseen: the chat above cached `prompt`
        status, r = self.call("/v1/responses", {"input": other, "max_output_tokens": 1})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["usage"]["input_tokens_details"]["cached_tokens"], 0, r)
        status, r2 = self.call("/v1/responses", {"input": other, "max_output_tokens": 1})
        self.assertEqual(r2["usage"]["input_tokens_details"]["cached_tokens"] % 16, 0)
        self.assertGreater(r2["usage"]["input_tokens_details"]["cached_tokens"], 0, r2)

    def test_c0_add_special_tokens_false_encodes_without_bos(self):
        """vLLM's add_special_tokens: false sends a text prompt's ids without BOS. The default model
        adds none (its tokenizer_config.json), so this runs a 1-rank cluster of the same model whose
        tokenizer adds BOS, as Mixtral's does: with the flag the answer is the gRPC API's greedy
        continuation of the ids without BOS (one prompt token fewer), without it of those with BOS.
        That cluster's coordinator has --served-model-name: GetModelInfo says it, the front (without
        names of its own) serves the model under it, and the vLLM metrics are labelled with it."""
        with tempfile.TemporaryDirectory() as model:
            for name in os.listdir(MODEL_DIR):
                if name != "tokenizer_config.json":
                    os.symlink(os.path.join(MODEL_DIR, name), os.path.join(model, name))
            with open(os.path.join(MODEL_DIR, "tokenizer_config.json")) as f:
                config = json.load(f)
            with open(os.path.join(model, "tokenizer_config.json"), "w") as f:
                json.dump(dict(config, add_bos_token=True), f)
            c = LaunchedCluster(["--np", "1", "--model", model, "--openai-listen", "127.0.0.1:0",
                                 "--metrics-listen", "127.0.0.1:0", "--coordinator-arg=--served-model-name=bos-moe"])
            try:
                c.start()
                grpc_client = MoeClient(c.address, timeout=60)
                base = "http://" + c.openai_address
                self.assertEqual(grpc_client.model_info().served_model_name, "bos-moe")
                status, models = self.call("/v1/models", base=base)
                self.assertEqual([m["id"] for m in models["data"]], ["bos-moe"], models)
                text = "ROMEO:"
                ids = grpc_client.tokenize(text, add_bos=False)
                self.assertEqual(grpc_client.tokenize(text), [1] + ids)
                for special, prompt_ids in ((False, ids), (True, [1] + ids)):
                    want = grpc_client.generate_full(token_ids=prompt_ids, max_tokens=8, temperature=0)
                    req = urllib.request.Request(base + "/v1/completions", headers={"Content-Type": "application/json"},
                                                 data=json.dumps({"prompt": [text, text], "max_tokens": 8, "temperature": 0,
                                                                  "add_special_tokens": special}).encode())
                    with urllib.request.urlopen(req, timeout=60) as r:
                        body = json.loads(r.read())
                    self.assertEqual([ch["text"] for ch in body["choices"]], [want.text] * 2)
                    self.assertEqual(body["usage"]["prompt_tokens"], 2 * len(prompt_ids))
                self.assertNotEqual(grpc_client.generate_full(token_ids=ids, max_tokens=8, temperature=0).text,
                                    grpc_client.generate_full(token_ids=[1] + ids, max_tokens=8, temperature=0).text,
                                    "BOS changes this model's answer, so the test can tell the two apart")
                status, metrics = self.call("/metrics", base=base, raw_answer=True)
                self.assertEqual(status, 200)
                self.assertRegex(metrics, r'vllm:generation_tokens_total\{model_name="bos-moe"\} [1-9]')
                grpc_client.close()
            finally:
                c.kill_everything()

    def test_c1_vllms_stop_truncation_and_allowed_ids(self):
        """include_stop_str_in_output keeps the stop string; a stop token id's text is left out unless
        it is included (as vLLM); truncate_prompt_tokens answers as the prompt's last tokens alone;
        allowed_token_ids answers only with those ids (through the gRPC API: the same text)."""
        s = self.samples["ROMEO:"]
        full = s["greedy_text"][len("ROMEO:"):]
        stop = full[5:9]
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 40, "temperature": 0,
                                                     "stop": [stop], "include_stop_str_in_output": True})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["text"], full[:full.find(stop) + len(stop)])
        self.assertEqual(body["choices"][0]["stop_reason"], stop)
        ids = s["greedy_ids"]
        k = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])

        def greedy_text(**extra):
            status, body = self.call("/v1/completions", dict({"prompt": "ROMEO:", "temperature": 0}, **extra))
            self.assertEqual(status, 200, body)
            return body["choices"][0]
        before, through = greedy_text(max_tokens=k)["text"], greedy_text(max_tokens=k + 1)["text"]
        self.assertNotEqual(before, through)
        stopped = greedy_text(max_tokens=40, stop_token_ids=[ids[k]])
        self.assertEqual((stopped["text"], stopped["finish_reason"], stopped["stop_reason"]), (before, "stop", ids[k]))
        self.assertIsNone(greedy_text(max_tokens=5)["stop_reason"])
        self.assertEqual(greedy_text(max_tokens=40, stop_token_ids=[ids[k]], include_stop_str_in_output=True)["text"],
                         through)
        # truncate_prompt_tokens: the last 2 of a longer prompt's ids.
        long_prompt = s["prompt_ids"] + ids[:10]
        status, body = self.call("/v1/completions", {"prompt": long_prompt, "max_tokens": 8, "temperature": 0,
                                                     "truncate_prompt_tokens": 2})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["usage"]["prompt_tokens"], 2)
        status, alone = self.call("/v1/completions", {"prompt": long_prompt[-2:], "max_tokens": 8, "temperature": 0})
        self.assertEqual(body["choices"][0]["text"], alone["choices"][0]["text"])
        # allowed_token_ids.
        allowed = sorted(set(ids[:6]))[:4]
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 10, "temperature": 0,
                                                     "allowed_token_ids": allowed})
        self.assertEqual(status, 200, body)
        want = self.grpc.generate_full("ROMEO:", max_tokens=10, temperature=0, allowed_token_ids=allowed)
        self.assertTrue(set(want.token_ids) <= set(allowed), want.token_ids)
        self.assertEqual(body["choices"][0]["text"], want.text)
        # priority: this server schedules first come, first served.
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "priority": 2})
        self.assertEqual((status, body["error"]["param"]), (400, "priority"), body)
        self.assertIn("--scheduling-policy priority", body["error"]["message"])
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "allowed_token_ids": [99999]})
        self.assertEqual((status, body["error"]["param"]), (400, "allowed_token_ids[0]"), body)
        # bad_words: a word of the greedy answer, encoded as written and after a space, never appears
        # in the ids; the answer is the same up to where it would have.
        word = [w for w in full.split() if w.isalpha() and len(w) > 3 and " " + w in full][0]
        encodings = [self.grpc.tokenize(text, add_bos=False) for text in (word, " " + word)]

        def contains(ids, seq):
            return any(ids[i:i + len(seq)] == seq for i in range(len(ids) - len(seq) + 1))
        self.assertTrue(any(contains(ids, e) for e in encodings), (word, encodings))
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 40, "temperature": 0,
                                                     "bad_words": [word]})
        self.assertEqual(status, 200, body)
        want = self.grpc.generate_full("ROMEO:", max_tokens=40, temperature=0, bad_words=[word])
        self.assertEqual(body["choices"][0]["text"], want.text)
        self.assertFalse(any(contains(want.token_ids, e) for e in encodings), (word, encodings, want.token_ids))
        first = next(i for i in range(len(ids)) if any(contains(ids[:i + 1], e) for e in encodings))
        self.assertEqual(want.token_ids[:first], ids[:first])

    def test_c2_logprobs_in_openais_shape_match_the_grpc_api(self):
        body = {"prompt": "ROMEO:", "max_tokens": 16, "temperature": 0, "logprobs": 3}
        status, answer = self.call("/v1/completions", body)
        self.assertEqual(status, 200, answer)
        choice = answer["choices"][0]
        lp = choice["logprobs"]
        want = self.grpc.generate_full("ROMEO:", max_tokens=16, temperature=0, logprobs=3)
        self.assertEqual("".join(lp["tokens"]), choice["text"])
        self.assertEqual(lp["token_logprobs"], [x.logprob for x in want.logprobs])
        self.assertEqual(lp["text_offset"], [len("".join(lp["tokens"][:i])) for i in range(len(lp["tokens"]))])
        for name, top, w in zip(lp["tokens"], lp["top_logprobs"], want.logprobs):
            # The 3 most probable (texts alone) and the chosen token under its name in tokens.
            expected = {t.text: t.logprob for t in reversed(w.top) if t.token_id != w.token_id}
            expected[name] = w.logprob
            self.assertEqual(top, expected)
            self.assertLessEqual(len(top), 4)
        events = self.stream(body)
        streamed = [t for e in events for c in e["choices"] if c["logprobs"] for t in c["logprobs"]["tokens"]]
        self.assertEqual(streamed, lp["tokens"])
        offsets = [o for e in events for c in e["choices"] if c["logprobs"] for o in c["logprobs"]["text_offset"]]
        self.assertEqual(offsets, lp["text_offset"])
        # Offsets count characters (OpenAI's, vLLM's): each token's text is at its offset, echoed
        # prompt and completion alike, where the prompt has characters of several bytes.
        for stream in (False, True):
            body = {"prompt": "Où é ROMEO: 日本", "max_tokens": 4, "temperature": 0, "echo": True, "logprobs": 0}
            if stream:
                events = self.stream(body)
                text = "".join(c["text"] for e in events for c in e["choices"])
                tokens = [t for e in events for c in e["choices"] if c["logprobs"] for t in c["logprobs"]["tokens"]]
                offsets = [o for e in events for c in e["choices"] if c["logprobs"] for o in c["logprobs"]["text_offset"]]
            else:
                status, answer = self.call("/v1/completions", body)
                self.assertEqual(status, 200, answer)
                text, lp = answer["choices"][0]["text"], answer["choices"][0]["logprobs"]
                tokens, offsets = lp["tokens"], lp["text_offset"]
            self.assertTrue(text.startswith("Où é ROMEO: 日本"), text)
            self.assertEqual(len(tokens), len(offsets))
            for token, offset in zip(tokens, offsets):
                self.assertEqual(text[offset:offset + len(token)], token, (stream, tokens, offsets))

    def test_c2a_return_token_ids_and_tokens_as_ids_as_vllm_returns_them(self):
        """vLLM's return_token_ids: the prompt's and each choice's token ids beside the text (the
        samples' transformers ids); return_tokens_as_token_ids names logprobs' tokens by id."""
        s = self.samples["ROMEO:"]
        n = 12
        want = s["greedy_ids"][:n]
        body = {"prompt": "ROMEO:", "max_tokens": n, "temperature": 0, "return_token_ids": True}
        status, answer = self.call("/v1/completions", dict(body, n=2))
        self.assertEqual(status, 200, answer)
        for choice in answer["choices"]:
            self.assertEqual(choice["token_ids"], want)
            self.assertEqual(choice["prompt_token_ids"], s["prompt_ids"])
        # Streamed: the prompt's ids on each choice's first chunk, every chunk its own ids.
        events = self.stream(dict(body, n=2))
        for index in (0, 1):
            chunks = [c for e in events for c in e["choices"] if c["index"] == index]
            self.assertEqual(chunks[0]["prompt_token_ids"], s["prompt_ids"])
            self.assertFalse(any("prompt_token_ids" in c for c in chunks[1:]))
            self.assertEqual([t for c in chunks for t in c["token_ids"]], want)
        # A batch of prompts (text and ids): each choice its own prompt's ids.
        other = self.samples["First Citizen:\n"]
        status, answer = self.call("/v1/completions", dict(body, prompt=["ROMEO:", other["prompt_ids"]]))
        self.assertEqual(status, 200, answer)
        self.assertEqual([c["prompt_token_ids"] for c in answer["choices"]], [s["prompt_ids"], other["prompt_ids"]])
        self.assertEqual(answer["choices"][1]["token_ids"], other["greedy_ids"][:n])
        # echo with max_tokens 0: the prompt's ids, none generated.
        status, answer = self.call("/v1/completions", dict(body, echo=True, max_tokens=0))
        self.assertEqual(status, 200, answer)
        self.assertEqual((answer["choices"][0]["prompt_token_ids"], answer["choices"][0]["token_ids"]),
                         (s["prompt_ids"], []))
        # Without it the answer has neither field.
        status, answer = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 2})
        self.assertNotIn("token_ids", answer["choices"][0])
        self.assertNotIn("prompt_token_ids", answer["choices"][0])
        # Logprobs' tokens named by id: the generated ids, top alternatives likewise.
        status, answer = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": n, "temperature": 0,
                                                       "logprobs": 2, "return_tokens_as_token_ids": True})
        self.assertEqual(status, 200, answer)
        lp = answer["choices"][0]["logprobs"]
        self.assertEqual(lp["tokens"], ["token_id:%d" % t for t in want])
        self.assertTrue(all(k.startswith("token_id:") for top in lp["top_logprobs"] for k in top), lp["top_logprobs"])
        self.assertEqual(answer["choices"][0]["text"], s["greedy_text"][len("ROMEO:"):][:len(answer["choices"][0]["text"])])
        # Chat: the rendered prompt's ids at the answer's top level (the /tokenize of the messages).
        case = CHAT_GOLDEN["cases"][0]
        chat = {"messages": case["messages"], "max_tokens": 6, "temperature": 0, "ignore_eos": True,
                "return_token_ids": True, "logprobs": True, "return_tokens_as_token_ids": True}
        status, answer = self.call("/v1/chat/completions", chat)
        self.assertEqual(status, 200, answer)
        self.assertEqual(answer["prompt_token_ids"], case["prompt_ids"])
        self.assertEqual(answer["choices"][0]["token_ids"], case["greedy_ids"][:6])
        self.assertEqual([c["token"] for c in answer["choices"][0]["logprobs"]["content"]],
                         ["token_id:%d" % t for t in case["greedy_ids"][:6]])
        events = self.stream(chat, path="/v1/chat/completions")
        self.assertEqual(events[0]["prompt_token_ids"], case["prompt_ids"])
        self.assertEqual([t for e in events[1:] for c in e["choices"] for t in c.get("token_ids", [])],
                         case["greedy_ids"][:6])

    def test_c2a2_continuous_usage_stats_count_each_choices_tokens(self):
        """vLLM's stream_options.continuous_usage_stats (with include_usage): every chunk carries its
        choice's usage so far, its prompt's tokens (transformers' ids of the sample's prompt) and the
        tokens the choice has streamed (counted from the chunks' own token_ids); chat's role chunk
        counts none yet. Without include_usage the chunks carry none, as in vLLM."""
        prompt, s = next(iter(self.samples.items()))
        body = {"prompt": prompt, "max_tokens": 7, "temperature": 1.0, "seed": 4, "n": 2, "return_token_ids": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        events = self.stream(body)
        counted = {}
        for e in events[:-1]:
            self.assertEqual(len(e["choices"]), 1, e)
            c = e["choices"][0]
            counted[c["index"]] = counted.get(c["index"], 0) + len(c.get("token_ids", []))
            self.assertEqual(e["usage"], {"prompt_tokens": len(s["prompt_ids"]), "completion_tokens": counted[c["index"]],
                                          "total_tokens": len(s["prompt_ids"]) + counted[c["index"]]}, e)
        self.assertEqual(counted, {0: 7, 1: 7})
        self.assertEqual(events[-1]["choices"], [])
        self.assertEqual(events[-1]["usage"]["completion_tokens"], 14)
        # Not asked for without include_usage.
        events = self.stream(dict(body, stream_options={"continuous_usage_stats": True}))
        self.assertTrue(all("usage" not in e for e in events), events)
        # Chat: the role chunk first, with no completion tokens yet.
        events = self.stream({"messages": CHAT_GOLDEN["cases"][0]["messages"], "max_tokens": 5, "temperature": 0,
                              "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
                             path="/v1/chat/completions")
        self.assertEqual(events[0]["choices"][0]["delta"].get("role"), "assistant", events[0])
        self.assertEqual(events[0]["usage"]["completion_tokens"], 0)
        prompt_tokens = events[0]["usage"]["prompt_tokens"]
        self.assertEqual(prompt_tokens, events[-1]["usage"]["prompt_tokens"])
        self.assertEqual(events[-2]["usage"], {"prompt_tokens": prompt_tokens, "completion_tokens": 5,
                                               "total_tokens": prompt_tokens + 5}, events[-2])

    def test_c2a3_vllms_request_id_names_the_answer(self):
        """vLLM's request_id: the answer's id is cmpl-<it> (chat: chatcmpl-<it>), whole, streamed and for
        an echo of the prompt alone; one longer than the coordinator takes is a 400 naming it. vLLM's
        X-Request-Id header names it over the body's and comes back on the answer."""
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 3, "request_id": "trace-7"})
        self.assertEqual((status, body["id"]), (200, "cmpl-trace-7"), body)
        events = self.stream({"prompt": ["ROMEO:", "JULIET:"], "max_tokens": 3, "request_id": "trace-8"})
        self.assertEqual({e["id"] for e in events}, {"cmpl-trace-8"})
        # Any characters (the coordinator's accepted-metadata carries it as binary: "café" as a plain
        # gRPC metadata value aborted the coordinator).
        events = self.stream({"prompt": "ROMEO:", "max_tokens": 3, "request_id": "café\n日本"})
        self.assertEqual({e["id"] for e in events}, {"cmpl-café\n日本"})
        self.assertEqual(self.call("/health")[0], 200)
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 0, "echo": True,
                                                     "request_id": "trace-9"})
        self.assertEqual((status, body["id"]), (200, "cmpl-trace-9"), body)
        status, body = self.call("/v1/chat/completions", {"messages": CHAT_GOLDEN["cases"][0]["messages"],
                                                          "max_tokens": 3, "request_id": "trace-10"})
        self.assertEqual((status, body["id"]), (200, "chatcmpl-trace-10"), body)
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 3, "request_id": "x" * 257})
        self.assertEqual((status, body["error"]["param"]), (400, "request_id"), body)
        # The X-Request-Id header names it too, over the body's, and comes back on the answer.
        req = urllib.request.Request(self.base + "/v1/completions", headers={
            "Content-Type": "application/json", "X-Request-Id": "hdr-1"}, data=json.dumps(
                {"prompt": "ROMEO:", "max_tokens": 3, "request_id": "body-1"}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            self.assertEqual(r.headers["X-Request-Id"], "hdr-1")
            self.assertEqual(json.loads(r.read())["id"], "cmpl-hdr-1")

    def test_c2b_prompt_logprobs_in_vllms_shape_match_scoring(self):
        s = self.samples["ROMEO:"]
        ids = s["prompt_ids"] + s["greedy_ids"][:6]
        body = {"prompt": ids, "max_tokens": 2, "temperature": 0, "prompt_logprobs": 2}
        status, answer = self.call("/v1/completions", body)
        self.assertEqual(status, 200, answer)
        plp = answer["choices"][0]["prompt_logprobs"]
        self.assertEqual(len(plp), len(ids))
        self.assertIsNone(plp[0])
        want = self.grpc.score_rolling(ids)
        for i, (entry, w) in enumerate(zip(plp[1:], want.logprobs)):
            mine = entry[str(ids[i + 1])]
            self.assertAlmostEqual(mine["logprob"], w, delta=1e-5)
            self.assertGreaterEqual(mine["rank"], 1)
            ranks = sorted(v["rank"] for k, v in entry.items() if k != str(ids[i + 1]))
            self.assertTrue(set(ranks) <= {1, 2}, entry)
            best = max(entry.values(), key=lambda v: v["logprob"])
            self.assertEqual(best["rank"], 1, entry)
        # The greedy continuation is the most probable token at each of its positions: rank 1.
        for entry, tok in zip(plp[len(s["prompt_ids"]):], s["greedy_ids"][:6]):
            self.assertEqual(entry[str(tok)]["rank"], 1, entry)
        events = self.stream(body)
        streamed = [c["prompt_logprobs"] for e in events for c in e["choices"] if c.get("prompt_logprobs")]
        self.assertEqual(streamed, [plp])
        # n completions: every choice carries them, streamed as in the whole answer (the same as
        # above but for float noise: two sequences run in the batch).
        def assert_close(got, want):
            self.assertEqual(len(got), len(want))
            self.assertIsNone(got[0])
            for g, w in zip(got[1:], want[1:]):
                self.assertEqual(sorted(g), sorted(w))
                for k in w:
                    self.assertEqual((g[k]["rank"], g[k]["decoded_token"]), (w[k]["rank"], w[k]["decoded_token"]))
                    self.assertAlmostEqual(g[k]["logprob"], w[k]["logprob"], delta=1e-3)
        status, answer = self.call("/v1/completions", dict(body, n=2))
        whole = [c["prompt_logprobs"] for c in answer["choices"]]
        self.assertEqual(whole[0], whole[1])
        assert_close(whole[0], plp)
        events = self.stream(dict(body, n=2))
        streamed = {c["index"]: c["prompt_logprobs"] for e in events for c in e["choices"] if c.get("prompt_logprobs")}
        self.assertEqual(sorted(streamed), [0, 1])
        self.assertEqual(streamed[0], streamed[1])
        assert_close(streamed[0], plp)
        # The completions run on both ranks, whose messages race: completion 1's only chunk (one
        # token) may come before completion 0's prompt logprobs, and must still carry them, first.
        for _ in range(12):
            events = self.stream(dict(body, n=3, max_tokens=1))
            for index in range(3):
                chunks = [c for e in events for c in e["choices"] if c["index"] == index]
                self.assertTrue(chunks and chunks[0].get("prompt_logprobs"), (index, chunks))
        # Two prompts: each choice's chunks in order, its finish last (held-back chunks go out
        # before what came after them).
        for _ in range(4):
            events = self.stream(dict(body, prompt=[ids, ids[:5]], n=2, max_tokens=3))
            for index in range(4):
                chunks = [c for e in events for c in e["choices"] if c["index"] == index]
                self.assertTrue(chunks[0].get("prompt_logprobs"), (index, chunks))
                self.assertEqual([bool(c.get("finish_reason")) for c in chunks][-1], True, chunks)
                self.assertFalse(any(c.get("finish_reason") for c in chunks[:-1]), chunks)
        # Chat: the answer's (vLLM's place for it).
        messages = CHAT_GOLDEN["cases"][0]["messages"]
        status, chat = self.call("/v1/chat/completions", {"messages": messages, "max_tokens": 2, "temperature": 0,
                                                          "prompt_logprobs": 0})
        self.assertEqual(status, 200, chat)
        self.assertIsNone(chat["prompt_logprobs"][0])
        self.assertEqual(len(chat["prompt_logprobs"]), chat["usage"]["prompt_tokens"])
        self.assertTrue(all(len(e) == 1 for e in chat["prompt_logprobs"][1:]))
        # A prompt of 1,500 tokens: its logprobs come from the coordinator in pieces; the answer has them
        # whole, and so does the stream's one chunk that carries them.
        long_ids = (ids * 200)[:1500]
        status, answer = self.call("/v1/completions", {"prompt": long_ids, "max_tokens": 1, "prompt_logprobs": 0})
        self.assertEqual(status, 200, answer)
        plp = answer["choices"][0]["prompt_logprobs"]
        self.assertEqual(len(plp), 1500)
        self.assertEqual([list(e) for e in plp[1:]], [[str(t)] for t in long_ids[1:]])
        events = self.stream({"prompt": long_ids, "max_tokens": 1, "prompt_logprobs": 0})
        streamed = [c["prompt_logprobs"] for e in events for c in e["choices"] if c.get("prompt_logprobs")]
        self.assertEqual(streamed, [plp])
        status, err = self.call("/v1/completions", dict(body, prompt_logprobs=21))
        self.assertEqual(status, 400, err)
        self.assertEqual(err["error"]["param"], "prompt_logprobs")

    def test_c3_echo_scores_the_prompt_as_lm_evaluation_harness_reads_it(self):
        s = self.samples["ROMEO:"]
        context, continuation = s["prompt_ids"], s["greedy_ids"][:10]
        # local-completions' loglikelihood request: the whole text as ids, echo, 1 token, logprobs 1.
        status, answer = self.call("/v1/completions", {"prompt": context + continuation, "max_tokens": 1,
                                                       "temperature": 0, "logprobs": 1, "echo": True})
        self.assertEqual(status, 200, answer)
        lp = answer["choices"][0]["logprobs"]
        ctxlen = len(context)
        self.assertEqual(len(lp["token_logprobs"]), ctxlen + len(continuation) + 1)
        self.assertIsNone(lp["token_logprobs"][0])
        got = lp["token_logprobs"][ctxlen:-1]
        want = self.grpc.score(context, continuation)
        self.assertEqual(len(got), len(want.logprobs))
        for g, w in zip(got, want.logprobs):
            self.assertAlmostEqual(g, w, delta=1e-5)
        # transformers' greedy continuation is the most probable token at every position: is_greedy
        # as the harness computes it.
        for tok, top in zip(got, lp["top_logprobs"][ctxlen:-1]):
            self.assertEqual(tok, max(top.values()))
        self.assertTrue(want.is_greedy)
        self.assertEqual(answer["usage"]["completion_tokens"], 1)
        # The prompt alone (max_tokens 0): its text, no completion.
        status, answer = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 0, "echo": True})
        self.assertEqual(status, 200, answer)
        self.assertEqual(answer["choices"][0]["text"], "ROMEO:")
        self.assertEqual(answer["choices"][0]["finish_reason"], "length")
        self.assertEqual(answer["usage"]["completion_tokens"], 0)
        # echo with a completion: the prompt's text, then the greedy continuation's.
        status, answer = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": len(s["greedy_ids"]),
                                                       "temperature": 0, "echo": True})
        self.assertEqual(status, 200, answer)
        self.assertEqual(answer["choices"][0]["text"], s["greedy_text"])
        # With truncate_prompt_tokens the echo is the prompt the model read, its last k tokens (as vLLM
        # echoes it): the answer of those k ids sent as the prompt, whole and streamed.
        text = "ROMEO: O, speak again, bright angel!"
        status, ids = self.call("/tokenize", {"prompt": text})
        self.assertEqual(status, 200, ids)
        k = 4
        body = {"max_tokens": 5, "temperature": 0, "echo": True, "logprobs": 1}
        status, want = self.call("/v1/completions", dict(body, prompt=ids["tokens"][-k:]))
        self.assertEqual(status, 200, want)
        status, got = self.call("/v1/completions", dict(body, prompt=text, truncate_prompt_tokens=k))
        self.assertEqual(status, 200, got)
        self.assertEqual(got["choices"], want["choices"])
        self.assertEqual(got["usage"]["prompt_tokens"], k)
        events = self.stream(dict(body, prompt=text, truncate_prompt_tokens=k, logprobs=None))
        self.assertEqual("".join(e["choices"][0]["text"] for e in events if e["choices"]), want["choices"][0]["text"])

    def test_c3a_echo_with_logprobs_k_gives_k_alternatives_as_prompt_logprobs(self):
        """vLLM's echo with logprobs k: each prompt position after the first carries k alternatives
        and the prompt's token (OpenAI's up to k + 1), as prompt_logprobs k gives there (two paths:
        ScoreRolling's scoring, Generate's)."""
        s = self.samples["ROMEO:"]
        ids = s["prompt_ids"] + s["greedy_ids"][:6]
        k = 3
        status, echoed = self.call("/v1/completions", {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": k})
        self.assertEqual(status, 200, echoed)
        tops = echoed["choices"][0]["logprobs"]["top_logprobs"]
        tokens = echoed["choices"][0]["logprobs"]["tokens"]
        self.assertEqual(len(tops), len(ids))
        self.assertIsNone(tops[0])
        status, answer = self.call("/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0,
                                                       "prompt_logprobs": k})
        self.assertEqual(status, 200, answer)
        plp = answer["choices"][0]["prompt_logprobs"]
        scored = self.grpc.score_rolling(ids, top_logprobs=k)
        for i, (top, entry) in enumerate(zip(tops[1:], plp[1:])):
            # prompt_logprobs holds the prompt's token and the k most probable: so does echo's top.
            self.assertIn(len(entry), (k, k + 1), entry)
            self.assertEqual(len(top), len(entry), (top, entry))
            for g, w in zip(sorted(top.values(), reverse=True),
                            sorted((v["logprob"] for v in entry.values()), reverse=True)):
                self.assertAlmostEqual(g, w, delta=1e-5)
            # The gRPC result: k ids, most probable first, the first the argmax.
            alts = scored.top[i].top
            self.assertEqual(len(alts), k)
            self.assertEqual(alts[0].token_id, scored.argmax_ids[i])
            self.assertEqual([a.logprob for a in alts], sorted((a.logprob for a in alts), reverse=True))
            # The prompt's token under its name in tokens, the other alternatives under their texts.
            self.assertEqual({a.text for a in alts if a.token_id != ids[i + 1]} | {tokens[i + 1]}, set(top))
            self.assertAlmostEqual(top[tokens[i + 1]], echoed["choices"][0]["logprobs"]["token_logprobs"][i + 1],
                                   delta=1e-6)
        # logprobs 1 streamed: the most probable token a position, and the prompt's where another.
        events = self.stream({"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1})
        streamed = [c["logprobs"]["top_logprobs"] for e in events for c in e["choices"] if c.get("logprobs")]
        self.assertEqual(len(streamed), 1)
        for i, top in enumerate(streamed[0][1:]):
            best = scored.top[i].top[0]
            if best.token_id == ids[i + 1]:
                self.assertEqual(set(top), {tokens[i + 1]}, top)
            else:
                self.assertEqual(set(top), {best.text, tokens[i + 1]}, top)
                if best.text != tokens[i + 1]:  # a name both have is the prompt token's
                    self.assertAlmostEqual(top[best.text], best.logprob, delta=1e-6)

    def test_c3b_echo_streamed_and_with_n_is_the_whole_answers(self):
        """vLLM serves echo streamed (the prompt on each choice's first chunk) and with n > 1 (each
        choice after the prompt): the streamed text and logprobs add up to the whole answer's, and
        each of n choices starts with the prompt."""
        s = self.samples["ROMEO:"]
        n_tokens = len(s["greedy_ids"])
        for prompt in ("ROMEO:", s["prompt_ids"]):
            body = {"prompt": prompt, "max_tokens": n_tokens, "temperature": 0, "echo": True, "logprobs": 1}
            status, whole = self.call("/v1/completions", body)
            self.assertEqual(status, 200, whole)
            self.assertEqual(whole["choices"][0]["text"], s["greedy_text"])
            events = self.stream(dict(body, stream_options={"include_usage": True}))
            chunks = [c for e in events for c in e["choices"]]
            self.assertTrue(chunks[0]["text"].startswith("ROMEO:"), chunks[0])
            self.assertEqual("".join(c["text"] for c in chunks), s["greedy_text"])
            streamed = {key: [x for c in chunks for x in c["logprobs"][key]]
                        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
            self.assertEqual(streamed["tokens"], whole["choices"][0]["logprobs"]["tokens"])
            self.assertEqual(streamed["text_offset"], whole["choices"][0]["logprobs"]["text_offset"])
            self.assertIsNone(streamed["token_logprobs"][0])
            for a, b in zip(streamed["token_logprobs"][1:], whole["choices"][0]["logprobs"]["token_logprobs"][1:]):
                self.assertAlmostEqual(a, b, delta=1e-5)
            self.assertEqual(events[-1]["usage"], whole["usage"])
        # max_tokens 0 streamed: one chunk per choice, the prompt alone; usage counts the prompt.
        events = self.stream({"prompt": ["ROMEO:", "JULIET:"], "max_tokens": 0, "echo": True, "n": 2,
                              "stream_options": {"include_usage": True}})
        chunks = [c for e in events for c in e["choices"]]
        self.assertEqual([(c["index"], c["text"], c["finish_reason"]) for c in chunks],
                         [(0, "ROMEO:", "length"), (1, "ROMEO:", "length"), (2, "JULIET:", "length"),
                          (3, "JULIET:", "length")])
        self.assertEqual(len({e["id"] for e in events}), 1)
        self.assertEqual(events[-1]["usage"]["completion_tokens"], 0)
        self.assertGreater(events[-1]["usage"]["prompt_tokens"], 0)
        # n > 1, whole: every choice is the prompt and then its own sampled continuation.
        status, answer = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 1.0,
                                                       "seed": 5, "n": 3, "echo": True})
        self.assertEqual(status, 200, answer)
        self.assertEqual(len(answer["choices"]), 3)
        status, plain = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 1.0,
                                                      "seed": 5, "n": 3})
        self.assertEqual(status, 200, plain)
        self.assertEqual([c["text"] for c in answer["choices"]], ["ROMEO:" + c["text"] for c in plain["choices"]])
        status, answer = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 0, "echo": True, "n": 2})
        self.assertEqual(status, 200, answer)
        self.assertEqual([(c["text"], c["finish_reason"]) for c in answer["choices"]], [("ROMEO:", "length")] * 2)
        self.assertTrue(answer["id"].startswith("cmpl-") and len(answer["id"]) > len("cmpl-"), answer["id"])

    def test_c4_a_batch_of_prompts_answers_each_as_alone(self):
        prompts = list(self.samples)
        status, answer = self.call("/v1/completions", {"prompt": prompts, "max_tokens": 12, "temperature": 0.7,
                                                       "seed": 3, "n": 2})
        self.assertEqual(status, 200, answer)
        self.assertEqual([c["index"] for c in answer["choices"]], list(range(2 * len(prompts))))
        for i, p in enumerate(prompts):
            alone = self.grpc.generate_choices(p, max_tokens=12, temperature=0.7, seed=3, n=2)
            self.assertEqual([c["text"] for c in answer["choices"][2 * i:2 * i + 2]], [a.text for a in alone], p)
        # lm-evaluation-harness's batched loglikelihood: token-id prompts, echo, logprobs.
        ids = [self.samples[p]["prompt_ids"] + self.samples[p]["greedy_ids"][:6] for p in prompts]
        status, answer = self.call("/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0,
                                                       "logprobs": 1, "echo": True})
        self.assertEqual(status, 200, answer)
        for i, p in enumerate(prompts):
            ctxlen = len(self.samples[p]["prompt_ids"])
            lp = answer["choices"][i]["logprobs"]
            want = self.grpc.score(self.samples[p]["prompt_ids"], self.samples[p]["greedy_ids"][:6])
            for g, w in zip(lp["token_logprobs"][ctxlen:-1], want.logprobs):
                self.assertAlmostEqual(g, w, delta=1e-5)
            self.assertEqual(len(lp["token_logprobs"][ctxlen:-1]), 6)
        # One bad prompt fails the batch with its error, streamed or not.
        status, answer = self.call("/v1/completions", {"prompt": [[5, 6], [5, 99999]], "max_tokens": 2})
        self.assertEqual(status, 400, answer)
        status, answer = self.call("/v1/completions", {"prompt": [[5, 6], [5, 99999]], "max_tokens": 2, "stream": True})
        self.assertEqual(status, 400, answer)
        # Streamed: the events of every prompt's choices, numbered as in the whole answer, one id.
        events = self.stream({"prompt": prompts, "max_tokens": 12, "temperature": 0.7, "seed": 3, "n": 2,
                              "stream_options": {"include_usage": True}})
        texts = {}
        for e in events[:-1]:
            for c in e["choices"]:
                texts[c["index"]] = texts.get(c["index"], "") + c["text"]
        self.assertEqual(len({e["id"] for e in events}), 1)
        self.assertEqual(sorted(texts), list(range(2 * len(prompts))))
        status, whole = self.call("/v1/completions", {"prompt": prompts, "max_tokens": 12, "temperature": 0.7,
                                                      "seed": 3, "n": 2})
        self.assertEqual([texts[i] for i in range(2 * len(prompts))], [c["text"] for c in whole["choices"]])
        self.assertEqual(events[-1]["usage"], whole["usage"])

    def test_d_errors_are_openai_shaped(self):
        cases = [
            ({"prompt": "x", "top_p": 1.5}, None, 400, "top_p"),
            ({"prompt": "x", "max_tokens": 5000}, None, 400, "max_tokens"),
            ({"prompt": "x", "temperature": "hot"}, None, 400, "temperature"),
            ({"prompt": "x", "model": "gpt-4"}, None, 404, "model"),
            ({"max_tokens": 3}, None, 400, "prompt"),
            ({"prompt": "x", "logprobs": 21}, None, 400, "logprobs"),
            ({"prompt": "x", "max_tokens": 0}, None, 400, "max_tokens"),
            ({"prompt": "x", "best_of": 3}, None, 400, "best_of"),
            ({"prompt": "x", "logit_bias": {"a": 1}}, None, 400, "logit_bias"),
            (None, b"{not json", 400, None),
            (None, b"[1, 2]", 400, None),
        ]
        for body, raw, want_status, param in cases:
            status, answer = self.call("/v1/completions", body, raw=raw)
            self.assertEqual(status, want_status, (body, raw, answer))
            self.assertEqual(answer["error"]["param"], param, answer)
            self.assertTrue(answer["error"]["message"], answer)
        status, answer = self.call("/v1/completions", method="GET")
        self.assertEqual(status, 405, answer)
        # 405 names the methods the route takes (Allow, which HTTP requires on it).
        for path, method, allow in (("/v1/completions", "GET", "POST"), ("/v1/models", "POST", "GET"),
                                    ("/v1/responses/resp_x", "PUT", "GET, DELETE")):
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(self.base + path, data=b"{}" if method != "GET" else None,
                                                              method=method), timeout=60)
            self.assertEqual((e.exception.code, e.exception.headers["Allow"]), (405, allow), path)
            e.exception.close()
        status, answer = self.call("/v1/chat/nothing", {"prompt": "x"})
        self.assertEqual(status, 404, answer)
        self.assertIn("/v1/completions", answer["error"]["message"])

    def test_d2_hostile_bodies_are_refused_and_the_server_lives_on(self):
        """Requests are served on civetweb's threads, whose stacks are ~100 KB: input that makes a
        parser recurse (a chat template 100,000 parentheses deep, a body nested 20,000 levels) gets a
        400 naming what is wrong, not a crash; a long text's token ids come back whole."""
        template = "{{ " + "(" * 100000 + "1" + ")" * 100000 + " }}"
        status, err = self.call("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                         "chat_template": template, "max_tokens": 1})
        self.assertEqual(status, 400, err)
        self.assertEqual(err["error"]["param"], "chat_template")
        self.assertIn("nested too deeply", err["error"]["message"])
        deep = b'{"prompt": "x", "chat_template_kwargs": ' + b"[" * 20000 + b"]" * 20000 + b"}"
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/invocations", "/tokenize"):
            status, err = self.call(path, raw=deep)
            self.assertEqual(status, 400, (path, err))
            self.assertIn("more than 512 levels deep", err["error"]["message"])
        status, body = self.call("/tokenize", {"prompt": "ab " * 1000000, "add_special_tokens": False})
        self.assertEqual(status, 200, str(body)[:300])
        self.assertEqual(body["count"], len(body["tokens"]))
        self.assertGreater(body["count"], 1000000)
        status, body = self.call("/health")
        self.assertEqual((status, body["status"]), (200, "SERVING"))

    def raw_http(self, request, port=None, half_close=False, timeout=60):
        """(status, parsed JSON body) of raw request bytes sent on a socket of their own; with
        half_close the client then closes its sending side (shutdown(SHUT_WR), as `nc -N` does)."""
        host, own_port = self.cluster.openai_address.rsplit(":", 1)
        with socket.create_connection((host, port or int(own_port)), timeout=timeout) as s:
            s.sendall(request)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    def test_d3_request_lines_and_bodies_the_http_parser_lets_through(self):
        """Bytes of a path that are not UTF-8 (echoed in a 404's message: that once ended the front
        with std::terminate) come back as U+FFFD; a POST without a body names that, one with two
        different Content-Length headers too; a client that
        closes its sending side after a whole request counts as gone, as in vLLM's server, and may
        still read a 499 that says so, not a 500."""
        for method, path in (("GET", "/%ff"), ("GET", "/v1/models/%ff"), ("GET", "/v1/responses/%ff"),
                             ("GET", "/v1/responses/%ff/input_items"), ("POST", "/v1/responses/%ff/cancel"),
                             ("DELETE", "/v1/responses/%c3")):
            status, err = self.call(path, method=method, raw=b"" if method == "POST" else None)
            self.assertEqual(status, 404, (method, path, err))
            self.assertIn("\ufffd", err["error"]["message"], (method, path))
        status, err = self.raw_http(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")
        self.assertEqual(status, 400, err)
        self.assertIn("no body", err["error"]["message"])
        status, err = self.raw_http(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n'
                                    b'Content-Length: 3\r\n\r\n{}')
        self.assertEqual(status, 400, err)
        self.assertIn("Content-Length is given twice", err["error"]["message"])
        body = json.dumps({"prompt": "ROMEO:", "max_tokens": 3000, "ignore_eos": True}).encode()
        status, err = self.raw_http(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body), half_close=True)
        self.assertEqual((status, err["error"]["type"]), (499, "cancelled"), err)
        self.assertIn("closed the connection", err["error"]["message"])
        wait_until_idle(self.grpc, 20, "the request still runs after its client closed its sending side")
        # A chat template that renders nothing names itself, not the prompt ids the request never sent.
        status, err = self.call("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                         "chat_template": "{# nothing #}", "max_tokens": 1})
        self.assertEqual((status, err["error"]["param"]), (400, "chat_template"), err)
        self.assertIn("renders these messages as no text", err["error"]["message"])
        status, body = self.call("/health")
        self.assertEqual((status, body["status"]), (200, "SERVING"))

    def test_d4_a_body_shorter_than_its_content_length_is_refused(self):
        """A client that stops sending before its Content-Length gets a 400 once the read times out
        (--request-timeout-s), where the front once ran the part that came."""
        with own_front(self, self.cluster.address, "--request-timeout-s", "1") as (port, _, _):
            body = b'{"prompt": "ROMEO:", "max_tokens": 2}'
            t0 = time.monotonic()
            status, err = self.raw_http(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        b"Content-Length: %d\r\n\r\n%s" % (len(body) + 10, body), port=port, timeout=30)
            self.assertEqual(status, 400, err)
            self.assertIn("ended after %d of its %d bytes" % (len(body), len(body) + 10), err["error"]["message"])
            self.assertLess(time.monotonic() - t0, 10)

    def test_e4_tokenize_return_token_strs_are_the_vocabularys_pieces(self):
        """vLLM's return_token_strs: each token's vocabulary entry, as the tokenizer.model file holds it
        (read here from its protobuf wire format, without the server's SentencePiece reader)."""
        pieces = sentencepiece_pieces(os.path.join(SOURCE_DIR, "models", MODEL, "tokenizer.model"))
        for prompt in ("ROMEO: O, speak again!\n\tJULIET é🦜", "  two  spaces"):  # byte pieces: "<0x0A>"
            status, body = self.call("/tokenize", {"prompt": prompt, "return_token_strs": True})
            self.assertEqual(status, 200, body)
            self.assertEqual(body["token_strs"], [pieces[t] for t in body["tokens"]])
            status, plain = self.call("/tokenize", {"prompt": prompt})
            self.assertEqual(plain["tokens"], body["tokens"])
            self.assertNotIn("token_strs", plain)
        status, body = self.call("/tokenize", {"messages": [{"role": "user", "content": "Speak!"}], "return_token_strs": True})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["token_strs"], [pieces[t] for t in body["tokens"]])
        self.assertEqual(body["token_strs"][0], "<s>")  # the template's BOS (this vocabulary has no [INST] piece)
        status, err = self.call("/tokenize", {"prompt": "x", "return_token_strs": "yes"})
        self.assertEqual(status, 400, err)
        self.assertEqual(err["error"]["param"], "return_token_strs")

    def test_e5_skip_special_tokens_false_writes_the_control_tokens_out(self):
        """vLLM's skip_special_tokens false: generated control tokens appear as their vocabulary pieces (read
        here from tokenizer.model's wire format), the EOS that ends the output only with
        include_stop_str_in_output; /detokenize writes them out as vLLM's does (Hugging Face's decode: the
        pieces joined, "▁" as a space)."""
        pieces = sentencepiece_pieces(os.path.join(SOURCE_DIR, "models", MODEL, "tokenizer.model"))
        bos, eos = pieces.index("<s>"), pieces.index("</s>")
        req = {"prompt": "JULIET:", "max_tokens": 3, "temperature": 0, "logit_bias": {str(bos): 100}}
        status, body = self.call("/v1/completions", dict(req, skip_special_tokens=False, logprobs=0))
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["text"], "<s>" * 3)
        self.assertEqual(body["choices"][0]["logprobs"]["tokens"], ["<s>"] * 3)
        events = self.stream(dict(req, skip_special_tokens=False))
        self.assertEqual("".join(e["choices"][0]["text"] for e in events if e["choices"]), "<s>" * 3)
        status, body = self.call("/v1/completions", req)  # skipped, as by default
        self.assertEqual((status, body["choices"][0]["text"]), (200, ""))
        # The EOS that ends the output: its text only with include_stop_str_in_output.
        req = {"prompt": "JULIET:", "max_tokens": 3, "temperature": 0, "logit_bias": {str(eos): 100}}
        for include, want in ((True, "</s>"), (False, "")):
            status, body = self.call("/v1/completions", dict(req, skip_special_tokens=False, include_stop_str_in_output=include))
            self.assertEqual(status, 200, body)
            self.assertEqual((body["choices"][0]["text"], body["choices"][0]["finish_reason"]), (want, "stop"))
        status, body = self.call("/v1/chat/completions", {"messages": [{"role": "user", "content": "Speak!"}],
                                                          "max_tokens": 2, "logit_bias": {str(bos): 100},
                                                          "skip_special_tokens": False})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["message"]["content"], "<s><s>")
        status, tokens = self.call("/tokenize", {"prompt": "ROMEO: speak again", "add_special_tokens": False})
        ids = [bos] + tokens["tokens"] + [eos]
        status, text = self.call("/detokenize", {"tokens": ids})
        self.assertEqual(status, 200, text)
        self.assertEqual(text["prompt"], "".join(pieces[t] for t in ids).replace("\u2581", " "))
        self.assertTrue(text["prompt"].startswith("<s>") and text["prompt"].endswith("</s>"), text)

    def test_f_chat_prompts_are_transformers_and_answers_their_greedy_continuation(self):
        n = CHAT_GOLDEN["max_tokens"]
        for case in CHAT_GOLDEN["cases"]:
            messages = case["messages"]
            status, body = self.call("/tokenize", {"model": MODEL, "messages": messages})
            self.assertEqual(status, 200, body)
            self.assertEqual(body["tokens"], case["prompt_ids"], case["prompt_text"])
            self.assertEqual((body["count"], body["max_model_len"]), (len(case["prompt_ids"]), 4096))
            # The model's greedy continuation of those ids is transformers' (through the gRPC API).
            want = self.grpc.generate_choices(token_ids=case["prompt_ids"], max_tokens=n, temperature=0,
                                              ignore_eos=True)[0]
            self.assertEqual(want.token_ids, case["greedy_ids"])
            status, body = self.call("/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": n,
                                                              "temperature": 0, "ignore_eos": True})
            self.assertEqual(status, 200, body)
            self.assertEqual(body["object"], "chat.completion")
            self.assertTrue(body["id"].startswith("chatcmpl-"), body["id"])
            choice = body["choices"][0]
            self.assertEqual(choice["message"], {"role": "assistant", "content": want.text})
            self.assertEqual(choice["finish_reason"], "length")
            self.assertIsNone(choice["logprobs"])
            self.assertEqual(body["usage"], {"prompt_tokens": len(case["prompt_ids"]), "completion_tokens": n,
                                             "total_tokens": len(case["prompt_ids"]) + n})
            # Streamed: a role chunk, then content deltas adding up to the same text.
            events = self.stream({"messages": messages, "max_tokens": n, "temperature": 0, "ignore_eos": True,
                                  "stream_options": {"include_usage": True}}, path="/v1/chat/completions")
            self.assertEqual(events[0]["object"], "chat.completion.chunk")
            self.assertEqual(events[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
            deltas = [c["delta"] for e in events[1:] for c in e["choices"]]
            self.assertEqual("".join(d["content"] for d in deltas), want.text)
            self.assertEqual([c["finish_reason"] for e in events for c in e["choices"]][-1], "length")
            self.assertEqual(events[-1]["usage"]["prompt_tokens"], len(case["prompt_ids"]))
        # Without max_tokens a chat completion may run to the end of the context (vLLM's default): it
        # stops at the model's end of sequence or there, so just check it is accepted.
        status, body = self.call("/v1/chat/completions", {"messages": CHAT_GOLDEN["cases"][0]["messages"],
                                                          "temperature": 0, "stop": ["\n"]})
        self.assertEqual(status, 200, body)
        self.assertIn(body["choices"][0]["finish_reason"], ("stop", "length"))

    def responses_stream(self, body):
        """The events of a streamed /v1/responses answer: each a named server-sent event whose name is its
        data's type, numbered from 0; the stream ends after the last (no [DONE])."""
        req = urllib.request.Request(self.base + "/v1/responses", data=json.dumps(dict(body, stream=True)).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            self.assertEqual(r.headers["Content-Type"], "text/event-stream")
            blocks = r.read().decode().split("\n\n")
        self.assertEqual(blocks[-1], "")
        events = []
        for block in blocks[:-1]:
            name, data = block.split("\n")
            self.assertTrue(name.startswith("event: ") and data.startswith("data: "), block)
            event = json.loads(data[len("data: "):])
            self.assertEqual(event["type"], name[len("event: "):])
            self.assertEqual(event["sequence_number"], len(events))
            events.append(event)
        return events

    def test_f1r_responses_api_answers_as_the_chat_completion_does(self):
        """OpenAI's Responses API (POST /v1/responses): a conversation's answer is transformers' greedy
        continuation (the chat golden's ids, detokenised), cut by max_output_tokens as "incomplete"; streamed,
        OpenAI's event sequence whose deltas add up to the same text; logprobs as the chat completion's."""
        n = CHAT_GOLDEN["max_tokens"]
        for case in CHAT_GOLDEN["cases"]:
            status, want = self.call("/detokenize", {"tokens": case["greedy_ids"]})
            self.assertEqual(status, 200, want)
            req = {"model": MODEL, "input": case["messages"], "max_output_tokens": n, "temperature": 0, "ignore_eos": True}
            status, r = self.call("/v1/responses", req)
            self.assertEqual(status, 200, r)
            self.assertEqual((r["object"], r["status"], r["model"]), ("response", "incomplete", MODEL))
            self.assertTrue(r["id"].startswith("resp_"), r["id"])
            self.assertEqual(r["incomplete_details"], {"reason": "max_output_tokens"})
            self.assertEqual(len(r["output"]), 1)
            item = r["output"][0]
            self.assertEqual((item["type"], item["role"], item["status"]), ("message", "assistant", "incomplete"))
            self.assertEqual(item["content"][0]["type"], "output_text")
            self.assertEqual(item["content"][0]["text"], want["prompt"], case["prompt_text"])
            self.assertEqual(r["usage"]["input_tokens"], len(case["prompt_ids"]))
            self.assertEqual(r["usage"]["output_tokens"], n)
            self.assertEqual(r["usage"]["total_tokens"], len(case["prompt_ids"]) + n)
            self.assertEqual((r["max_output_tokens"], r["temperature"], r["store"]), (n, 0, True))

            events = self.responses_stream(req)
            types = [e["type"] for e in events]
            self.assertEqual(types[:4], ["response.created", "response.in_progress", "response.output_item.added",
                                         "response.content_part.added"])
            self.assertEqual(types[-4:], ["response.output_text.done", "response.content_part.done",
                                          "response.output_item.done", "response.incomplete"])
            self.assertTrue(all(t == "response.output_text.delta" for t in types[4:-4]), types)
            text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
            self.assertEqual(text, want["prompt"])
            self.assertEqual(events[-4]["text"], text)
            final = events[-1]["response"]
            self.assertEqual(final["output"][0]["content"][0]["text"], text)
            # The same counts, but for the prompt's whole blocks the whole answer left in the prefix cache.
            cached = (len(case["prompt_ids"]) - 1) // 16 * 16
            self.assertEqual(final["usage"], dict(r["usage"], input_tokens_details={"cached_tokens": cached}))
            self.assertEqual(final["id"], events[0]["response"]["id"])
            self.assertEqual(events[0]["response"]["status"], "in_progress")

        # Logprobs (include message.output_text.logprobs) are the chat completion's, whole and streamed.
        messages = CHAT_GOLDEN["cases"][0]["messages"]
        status, chat = self.call("/v1/chat/completions", {"messages": messages, "max_tokens": 6, "temperature": 0,
                                                          "logprobs": True, "top_logprobs": 2})
        self.assertEqual(status, 200, chat)
        req = {"input": messages, "max_output_tokens": 6, "temperature": 0, "top_logprobs": 2,
               "include": ["message.output_text.logprobs"]}
        status, r = self.call("/v1/responses", req)
        self.assertEqual(status, 200, r)
        part = r["output"][0]["content"][0]
        self.assertEqual(part["text"], chat["choices"][0]["message"]["content"])
        self.assertEqual(part["logprobs"], chat["choices"][0]["logprobs"]["content"])
        self.assertEqual(r["status"], "completed" if chat["choices"][0]["finish_reason"] == "stop" else "incomplete")
        events = self.responses_stream(req)
        streamed = [lp for e in events if e["type"] == "response.output_text.delta" for lp in e["logprobs"]]
        self.assertEqual(streamed, part["logprobs"])

        # instructions: a system turn before the input, as the chat completion with that conversation (a
        # template of the request's own: Mixtral's refuses system turns, and the refusal names input).
        template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
        status, chat = self.call("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be a king."},
                                                                       {"role": "user", "content": "Speak!"}],
                                                          "chat_template": template, "max_tokens": 8, "temperature": 0})
        self.assertEqual(status, 200, chat)
        status, r = self.call("/v1/responses", {"instructions": "Be a king.", "input": "Speak!", "chat_template": template,
                                                "max_output_tokens": 8, "temperature": 0})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["output"][0]["content"][0]["text"], chat["choices"][0]["message"]["content"])
        self.assertEqual(r["instructions"], "Be a king.")
        self.assertEqual(r["usage"]["input_tokens"], chat["usage"]["prompt_tokens"])
        status, err = self.call("/v1/responses", {"instructions": "Be a king.", "input": "Speak!"})
        self.assertEqual((status, err["error"]["param"]), (400, "input"), err)

        # text.format json_schema: an answer the schema admits.
        import jsonschema
        schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
                  "required": ["name", "age"], "additionalProperties": False}
        status, r = self.call("/v1/responses", {"input": "ROMEO:", "max_output_tokens": 64, "temperature": 0.8, "seed": 3,
                                                "text": {"format": {"type": "json_schema", "name": "who", "schema": schema}}})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["status"], "completed", r)
        jsonschema.validate(json.loads(r["output"][0]["content"][0]["text"]), schema)
        self.assertEqual(r["text"]["format"]["name"], "who")

        # Refusals name the Responses API's field.
        for body, param, code in (({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", 400),
                                  ({"input": "x", "previous_response_id": "resp_none"}, "previous_response_id", 404),
                                  ({"input": "x", "background": True, "stream": True}, "background", 400),
                                  ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", 400),
                                  ({"input": "x", "model": "other"}, "model", 404),
                                  ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type", 400),
                                  ({"input": "x", "max_output_tokens": 5000}, "max_output_tokens", 400)):
            status, err = self.call("/v1/responses", body)
            self.assertEqual((status, err["error"]["param"]), (code, param), err)

    def test_f1r5_background_responses_run_on_and_can_be_cancelled(self):
        """OpenAI's background mode: the response comes back "queued" at once, GET /v1/responses/{id} finds it
        running, then answered as the same request in the foreground answers; POST .../cancel ends a running
        one (its generation leaves the cluster) and it stays "cancelled"; DELETE of a running one forgets it."""
        messages = CHAT_GOLDEN["cases"][0]["messages"]
        req = {"input": messages, "max_output_tokens": 12, "temperature": 0}
        status, fore = self.call("/v1/responses", req)
        self.assertEqual(status, 200, fore)
        status, back = self.call("/v1/responses", dict(req, background=True))
        self.assertEqual(status, 200, back)
        self.assertEqual((back["status"], back["background"], back["output"]), ("queued", True, []))

        def until_done(rid, timeout=60):
            deadline = time.monotonic() + timeout
            while True:
                status, got = self.call("/v1/responses/" + rid, method="GET")
                self.assertEqual(status, 200, got)
                if got["status"] not in ("queued", "in_progress") or time.monotonic() > deadline:
                    return got
                time.sleep(0.05)

        done = until_done(back["id"])
        self.assertEqual(done["status"], fore["status"])
        self.assertEqual(done["output"][0]["content"][0]["text"], fore["output"][0]["content"][0]["text"])
        # The same counts, but the prompt's blocks the foreground answer left in the prefix cache.
        self.assertEqual({k: v for k, v in done["usage"].items() if k != "input_tokens_details"},
                         {k: v for k, v in fore["usage"].items() if k != "input_tokens_details"})
        self.assertGreaterEqual(done["usage"]["input_tokens_details"]["cached_tokens"],
                                fore["usage"]["input_tokens_details"]["cached_tokens"])
        # Cancelling one that has ended answers it unchanged.
        status, again = self.call("/v1/responses/%s/cancel" % back["id"], {})
        self.assertEqual((status, again), (200, done))
        # It carries a conversation on, as a foreground one does.
        status, nxt = self.call("/v1/responses", {"previous_response_id": back["id"], "input": "Again.", "max_output_tokens": 2})
        self.assertEqual(status, 200, nxt)

        # A long one cancelled: "cancelled" at once and for good, its generation gone from the cluster.
        long_req = {"input": "Speak on.", "max_output_tokens": 3000, "ignore_eos": True, "temperature": 0, "background": True}
        status, running = self.call("/v1/responses", long_req)
        self.assertEqual(status, 200, running)
        status, cancelled = self.call("/v1/responses/%s/cancel" % running["id"], {})
        self.assertEqual((status, cancelled["status"]), (200, "cancelled"), cancelled)
        deadline = time.monotonic() + 30
        while self.grpc.stats().requests_running > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.grpc.stats().requests_running, 0, "the cancelled generation left the cluster")
        status, got = self.call("/v1/responses/" + running["id"], method="GET")
        self.assertEqual((status, got["status"], got["output"]), (200, "cancelled", []))
        status, err = self.call("/v1/responses", {"previous_response_id": running["id"], "input": "x"})
        self.assertEqual((status, err["error"]["param"]), (400, "previous_response_id"), err)
        # Cancelling a response made in the foreground is refused; an unknown id is 404.
        status, err = self.call("/v1/responses/%s/cancel" % fore["id"], {})
        self.assertEqual(status, 400, err)
        self.assertEqual(self.call("/v1/responses/resp_nothing/cancel", {})[0], 404)
        # DELETE of a running one: forgotten, and its end does not bring it back.
        status, running = self.call("/v1/responses", long_req)
        status, deleted = self.call("/v1/responses/" + running["id"], method="DELETE")
        self.assertEqual((status, deleted["deleted"]), (200, True), deleted)
        deadline = time.monotonic() + 30
        while self.grpc.stats().requests_running > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        self.assertEqual(self.call("/v1/responses/" + running["id"], method="GET")[0], 404)
        # A front stopped (SIGTERM) while one runs cancels it and exits 0 (own_front checks), promptly.
        t0 = time.monotonic()
        with own_front(self, self.cluster.address, "--chat-template=" + CHAT_TEMPLATE) as (port, _, _):
            status, running = self.call("/v1/responses", long_req, base="http://127.0.0.1:%d" % port)
            self.assertEqual((status, running["status"]), (200, "queued"), running)
        self.assertLess(time.monotonic() - t0, 20)

    def test_f1r3_stored_responses_carry_a_conversation_on(self):
        """store (OpenAI's default): a response is kept (GET /v1/responses/{id} answers it, GET .../input_items
        lists its input, DELETE forgets it),
        and previous_response_id puts its conversation (input and output) before the next input, as the
        chat completion of the whole conversation answers; streamed answers are stored too. Past
        --responses-store N the least recently used is dropped; with 0 nothing is kept."""
        first = CHAT_GOLDEN["cases"][0]["messages"]
        status, r1 = self.call("/v1/responses", {"input": first, "max_output_tokens": 6, "temperature": 0})
        self.assertEqual(status, 200, r1)
        self.assertTrue(r1["store"])
        status, got = self.call("/v1/responses/" + r1["id"], method="GET")
        self.assertEqual((status, got), (200, r1))
        said = r1["output"][0]["content"][0]["text"]
        follow = {"role": "user", "content": "Say it again."}
        status, chat = self.call("/v1/chat/completions", {"messages": first + [{"role": "assistant", "content": said}, follow],
                                                          "max_tokens": 6, "temperature": 0})
        self.assertEqual(status, 200, chat)
        for stream in (False, True):
            req = {"previous_response_id": r1["id"], "input": [follow], "max_output_tokens": 6, "temperature": 0}
            if stream:
                r2 = self.responses_stream(req)[-1]["response"]
            else:
                status, r2 = self.call("/v1/responses", req)
                self.assertEqual(status, 200, r2)
            self.assertEqual(r2["previous_response_id"], r1["id"])
            self.assertEqual(r2["output"][0]["content"][0]["text"], chat["choices"][0]["message"]["content"], stream)
            self.assertEqual(r2["usage"]["input_tokens"], chat["usage"]["prompt_tokens"])
            status, got = self.call("/v1/responses/" + r2["id"], method="GET")
            self.assertEqual((status, got["output"]), (200, r2["output"]))
        # A chain: the third turn sees both before it (its prompt is longer by the second turn).
        status, r3 = self.call("/v1/responses", {"previous_response_id": r2["id"], "input": "Once more.",
                                                 "max_output_tokens": 2, "temperature": 0})
        self.assertEqual(status, 200, r3)
        self.assertGreater(r3["usage"]["input_tokens"], r2["usage"]["input_tokens"] + r2["usage"]["output_tokens"])
        # store: false keeps nothing; an unknown id is a 404 naming previous_response_id.
        status, r4 = self.call("/v1/responses", {"input": "x", "max_output_tokens": 1, "store": False})
        self.assertEqual((status, r4["store"]), (200, False), r4)
        status, err = self.call("/v1/responses/" + r4["id"], method="GET")
        self.assertEqual(status, 404, err)
        status, err = self.call("/v1/responses", {"input": "x", "previous_response_id": r4["id"]})
        self.assertEqual((status, err["error"]["param"]), (404, "previous_response_id"), err)
        status, gone = self.call("/v1/responses/" + r1["id"], method="DELETE")
        self.assertEqual((status, gone), (200, {"id": r1["id"], "object": "response", "deleted": True}))
        for method in ("GET", "DELETE"):
            status, err = self.call("/v1/responses/" + r1["id"], method=method)
            self.assertEqual(status, 404, err)
        # input_items: a response's own input (not its previous responses'), newest first by default.
        status, items = self.call("/v1/responses/" + r2["id"] + "/input_items", method="GET")
        self.assertEqual(status, 200, items)
        self.assertEqual([(i["type"], i["role"], i["content"]) for i in items["data"]],
                         [("message", "user", [{"type": "input_text", "text": follow["content"]}])])
        self.assertEqual((items["object"], items["first_id"], items["has_more"]), ("list", items["data"][0]["id"], False))
        status, items = self.call("/v1/responses/" + r3["id"] + "/input_items?order=asc&limit=1", method="GET")
        self.assertEqual((status, items["data"][0]["content"][0]["text"]), (200, "Once more."), items)
        status, err = self.call("/v1/responses/" + r3["id"] + "/input_items?limit=500", method="GET")
        self.assertEqual((status, err["error"]["param"]), (400, "limit"), err)
        status, err = self.call("/v1/responses/" + r1["id"] + "/input_items", method="GET")
        self.assertEqual((status, err["error"]["param"]), (404, "response_id"), err)
        status, err = self.call("/v1/responses/" + r3["id"] + "/input_items", method="POST", body={})
        self.assertEqual(status, 405, err)

        # Own fronts: capacity 2 drops the least recently used; 0 keeps none.
        for capacity in ("2", "0"):
            with own_front(self, self.cluster.address, "--responses-store", capacity,
                           "--chat-template=" + CHAT_TEMPLATE) as (port, _, _):
                base = "http://127.0.0.1:%d" % port
                ids = []
                for i in range(3):
                    status, r = self.call("/v1/responses", {"input": "x%d" % i, "max_output_tokens": 1}, base=base)
                    self.assertEqual((status, r["store"]), (200, capacity != "0"), r)
                    ids.append(r["id"])
                kept = [self.call("/v1/responses/" + i, method="GET", base=base)[0] for i in ids]
                self.assertEqual(kept, [404, 200, 200] if capacity == "2" else [404, 404, 404])
                if capacity == "0":  # a background response could never be fetched: refused
                    status, err = self.call("/v1/responses", {"input": "x", "background": True}, base=base)
                    self.assertEqual((status, err["error"]["param"]), (400, "background"), err)

    def test_f1r4_invocations_answers_as_the_endpoint_its_body_is_for(self):
        """vLLM's /invocations (SageMaker): a body with messages is a chat completion, one with prompt a
        completion, answered as those endpoints answer them (greedy: the same text)."""
        messages = CHAT_GOLDEN["cases"][0]["messages"]
        for path, body in (("/v1/chat/completions", {"messages": messages, "max_tokens": 5, "temperature": 0}),
                           ("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0})):
            status, want = self.call(path, body)
            self.assertEqual(status, 200, want)
            status, got = self.call("/invocations", body)
            self.assertEqual(status, 200, got)
            self.assertEqual(got["object"], want["object"])
            self.assertEqual(got["choices"], want["choices"])
        status, err = self.call("/invocations", {"input": "x"})
        self.assertEqual((status, err["error"]["param"]), (400, "messages"), err)

    def test_f1r2_responses_api_function_tools_answer_as_the_chat_completion_does(self):
        """Function tools on /v1/responses: a named function's and "required"'s calls are the chat
        completion's (function_call items; arguments the tools' schemas admit), streamed as
        function_call_arguments deltas adding up to them; function_call and function_call_output input
        items reach the template as the assistant's tool calls and the tool turns."""
        import jsonschema
        weather = {"type": "object", "properties": {"city": {"type": "string", "minLength": 2, "maxLength": 20},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}
        chat_tools = [{"type": "function", "function": {"name": "get_weather", "description": "the forecast",
                                                        "parameters": weather}}]
        tools = [{"type": "function", "name": "get_weather", "description": "the forecast", "parameters": weather}]
        messages = CHAT_GOLDEN["cases"][0]["messages"]
        status, chat = self.call("/v1/chat/completions", {"messages": messages, "tools": chat_tools, "max_tokens": 300,
                                                          "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                                                          "temperature": 0})
        self.assertEqual(status, 200, chat)
        [want] = chat["choices"][0]["message"]["tool_calls"]
        req = {"input": messages, "tools": tools, "tool_choice": {"type": "function", "name": "get_weather"},
               "max_output_tokens": 300, "temperature": 0}
        status, r = self.call("/v1/responses", req)
        self.assertEqual(status, 200, r)
        self.assertEqual(r["status"], "completed", r)
        [item] = r["output"]
        self.assertEqual((item["type"], item["name"], item["status"]), ("function_call", "get_weather", "completed"))
        self.assertEqual(item["arguments"], want["function"]["arguments"])
        self.assertTrue(item["call_id"].startswith("chatcmpl-tool-"), item)
        jsonschema.validate(json.loads(item["arguments"]), weather)
        self.assertEqual(r["tools"], tools)
        events = self.responses_stream(req)
        added = [e for e in events if e["type"] == "response.output_item.added"]
        self.assertEqual([(e["item"]["type"], e["item"]["name"]) for e in added], [("function_call", "get_weather")])
        arguments = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
        self.assertEqual(arguments, item["arguments"])
        done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
        self.assertEqual([d["arguments"] for d in done], [item["arguments"]])
        self.assertEqual(events[-1]["type"], "response.completed")
        self.assertEqual(events[-1]["response"]["output"][0]["arguments"], item["arguments"])

        # "required" (held to end its list as the chat test does): the chat completion's calls, in order.
        bias = {"1984": -100, "35": -100, "13": -100, "12": -100, "16": -100, "96": 50}
        status, chat = self.call("/v1/chat/completions", {"messages": messages, "tools": chat_tools, "tool_choice": "required",
                                                          "max_tokens": 300, "temperature": 0, "logit_bias": bias})
        self.assertEqual(status, 200, chat)
        want = [(c["function"]["name"], c["function"]["arguments"]) for c in chat["choices"][0]["message"]["tool_calls"]]
        status, r = self.call("/v1/responses", {"input": messages, "tools": tools, "tool_choice": "required",
                                                "max_output_tokens": 300, "temperature": 0, "logit_bias": bias})
        self.assertEqual(status, 200, r)
        self.assertEqual([(i["name"], i["arguments"]) for i in r["output"]], want)

        # A call and its output given back: the conversation the template sees is the chat request's with
        # the assistant's tool_calls and the tool turn (a template of the request's own that prints them).
        template = ("{% for m in messages %}{{ m['role'] }}:{% if m.tool_calls %}{% for c in m.tool_calls %}"
                    "{{ c.id }}={{ c.function.name }}{{ c.function.arguments }};{% endfor %}{% endif %}"
                    "{% if m.tool_call_id %}[{{ m.tool_call_id }}]{% endif %}{{ m['content'] or '' }}\n{% endfor %}")
        chat_messages = [{"role": "user", "content": "Weather?"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
        status, chat = self.call("/tokenize", {"messages": chat_messages, "chat_template": template,
                                               "add_generation_prompt": False})
        self.assertEqual(status, 200, chat)
        status, text = self.call("/detokenize", {"tokens": chat["tokens"]})
        self.assertIn("assistant:c1=get_weather{};", text["prompt"])
        self.assertIn("tool:[c1]sunny", text["prompt"])
        status, r = self.call("/v1/responses", {"input": [{"role": "user", "content": "Weather?"},
                                                          {"type": "function_call", "call_id": "c1", "name": "get_weather",
                                                           "arguments": "{}"},
                                                          {"type": "function_call_output", "call_id": "c1", "output": "sunny"}],
                                                "chat_template": template, "max_output_tokens": 1})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["usage"]["input_tokens"], len(chat["tokens"]))

    def test_f2_chat_logprobs_templates_and_refusals(self):
        messages = CHAT_GOLDEN["cases"][0]["messages"]
        status, body = self.call("/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0,
                                                          "logprobs": True, "top_logprobs": 2})
        self.assertEqual(status, 200, body)
        content = body["choices"][0]["logprobs"]["content"]
        self.assertEqual(len(content), 8)
        self.assertEqual("".join(t["token"] for t in content), body["choices"][0]["message"]["content"])
        for t in content:
            self.assertEqual(len(t["top_logprobs"]), 2)
            self.assertEqual(t["bytes"], list(t["token"].encode()))
            self.assertEqual(t["top_logprobs"][0]["logprob"], t["logprob"])  # greedy: the best one
        # Characters the vocabulary spells in byte-fallback tokens: each token's own bytes (OpenAI's),
        # which add up to the answer's UTF-8 where the tokens' texts (held back, then whole) cannot say it.
        status, body = self.call("/v1/chat/completions", {"messages": messages, "max_tokens": 12, "logprobs": True,
                                                          "guided_choice": ["é€ ok"]})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["message"]["content"], "é€ ok")
        content = body["choices"][0]["logprobs"]["content"]
        self.assertEqual(bytes(b for t in content for b in t["bytes"]), "é€ ok".encode())
        self.assertTrue(all(t["bytes"] for t in content[:-1]), content)  # held-back tokens' bytes too
        self.assertEqual((content[-1]["token"], content[-1]["bytes"]), ("", []))  # the end of sequence
        self.assertGreater(len(content), 3)
        # A request's own template; continue_final_message leaves the last turn open.
        status, body = self.call("/tokenize", {"messages": messages,
                                               "chat_template": "{% for m in messages %}{{ m['content'] }}|{% endfor %}"})
        self.assertEqual(status, 200, body)
        status, plain = self.call("/tokenize", {"prompt": messages[0]["content"] + "|", "add_special_tokens": False})
        self.assertEqual(body["tokens"], plain["tokens"])
        turn = [{"role": "user", "content": "What says the king?"}, {"role": "assistant", "content": "He bids"}]
        status, body = self.call("/tokenize", {"messages": turn, "continue_final_message": True,
                                               "add_generation_prompt": False})
        self.assertEqual(status, 200, body)
        status, text = self.call("/detokenize", {"tokens": body["tokens"]})
        self.assertEqual(status, 200, text)
        self.assertTrue(text["prompt"].endswith("[/INST]He bids"), text)
        # vLLM's chat echo: the open turn's text before the continuation, whole and streamed; the
        # continuation is the same as without echo.
        req = {"messages": turn, "continue_final_message": True, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
        status, plain = self.call("/v1/chat/completions", req)
        self.assertEqual(status, 200, plain)
        status, echoed = self.call("/v1/chat/completions", dict(req, echo=True))
        self.assertEqual(status, 200, echoed)
        self.assertEqual(echoed["choices"][0]["message"]["content"], "He bids" + plain["choices"][0]["message"]["content"])
        self.assertEqual(echoed["usage"], plain["usage"])
        events = self.stream(dict(req, echo=True), path="/v1/chat/completions")
        self.assertEqual(events[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(events[1]["choices"][0]["delta"], {"content": "He bids"})
        self.assertEqual("".join(c["delta"].get("content", "") for e in events for c in e["choices"]),
                         echoed["choices"][0]["message"]["content"])
        # The last message a user's (the answer's role is the assistant's): nothing to echo.
        status, answer = self.call("/v1/chat/completions", {"messages": turn[:1], "max_tokens": 4, "temperature": 0,
                                                            "echo": True})
        status2, same = self.call("/v1/chat/completions", {"messages": turn[:1], "max_tokens": 4, "temperature": 0})
        self.assertEqual(answer["choices"][0]["message"], same["choices"][0]["message"])
        cases = [
            ({"max_tokens": 3}, 400, "messages"),
            ({"messages": []}, 400, "messages"),
            ({"messages": [{"content": "x"}]}, 400, "messages[0].role"),
            ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
             "messages[0].content"),
            ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, 400, "messages"),
            ({"messages": messages, "tools": [], "tool_choice": "auto"}, 400, "tool_choice"),
            # Fields of an unexpected type are refused, not thrown (an exception there ended the server).
            ({"messages": messages, "tools": [{"type": {}}], "tool_choice": "required"}, 400, "tools[0]"),
            ({"messages": messages, "tool_choice": {"type": 7}, "tools": [{"type": "function", "function": {"name": "f"}}]},
             400, "tool_choice"),
            ({"messages": messages, "stream": True, "stream_options": {"include_usage": "yes"}}, 400, "stream_options"),
            ({"messages": messages, "response_format": {"type": "json_schema", "json_schema": {}}}, 400,
             "response_format"),
            ({"messages": messages, "response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "integer", "multipleOf": 2}}}}, 400, "response_format.json_schema"),
            ({"messages": messages, "top_logprobs": 2}, 400, "top_logprobs"),
            ({"messages": messages, "chat_template": "{% if %}"}, 400, "chat_template"),
            ({"messages": messages, "max_tokens": 5000}, 400, "max_tokens"),
        ]
        for body, want_status, param in cases:
            status, answer = self.call("/v1/chat/completions", body)
            self.assertEqual(status, want_status, (body, answer))
            self.assertEqual(answer["error"]["param"], param, answer)
        status, answer = self.call("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"},
                                                                         {"role": "user", "content": "b"}]})
        self.assertIn("Conversation roles must alternate", answer["error"]["message"])
        # Parts of text are joined, as OpenAI's content arrays carry them.
        status, parts = self.call("/tokenize", {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "ROMEO: speak,"}, {"type": "text", "text": "good nurse"}]}]})
        status, joined = self.call("/tokenize", {"messages": [{"role": "user", "content": "ROMEO: speak,\ngood nurse"}]})
        self.assertEqual(parts["tokens"], joined["tokens"])
        # An assistant turn's null or absent content (OpenAI clients send either beside tool_calls) reaches
        # the template as "", as vLLM gives it (Mixtral-8x7B-Instruct's template adds content to a string: null was a
        # 400); a refusal part is text, as vLLM reads it.
        def turns(content):
            return [{"role": "user", "content": "What says the king?"}, dict(content, role="assistant"),
                    {"role": "user", "content": "Then I will go."}]
        call = {"id": "abcdefghi", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        status, empty = self.call("/tokenize", {"messages": turns({"content": ""})})
        self.assertEqual(status, 200, empty)
        for content in ({"content": None}, {"content": None, "tool_calls": [call]}, {"tool_calls": [call]}):
            status, null = self.call("/tokenize", {"messages": turns(content)})
            self.assertEqual(status, 200, (content, null))
            self.assertEqual(null["tokens"], empty["tokens"], content)
        status, answer = self.call("/v1/chat/completions", {"messages": turns({"content": None}), "max_tokens": 2})
        self.assertEqual(status, 200, answer)
        status, refusal = self.call("/tokenize", {"messages": turns({"content": [{"type": "refusal", "refusal": "No."}]})})
        self.assertEqual(status, 200, refusal)
        status, text = self.call("/tokenize", {"messages": turns({"content": "No."})})
        self.assertEqual(refusal["tokens"], text["tokens"])

    def test_f3_a_server_without_a_chat_template_refuses_chat_naming_the_fix(self):
        with tempfile.TemporaryDirectory() as tmp:
            access_log = os.path.join(tmp, "access.log")
            with own_front(self, self.cluster.address, "--access-log", access_log) as (port, _, _):
                req = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % port,
                                             data=json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(),
                                             headers={"Content-Type": "application/json"})
                with self.assertRaises(urllib.error.HTTPError) as ctx:
                    urllib.request.urlopen(req, timeout=30)
                self.assertEqual(ctx.exception.code, 400)
                error = json.loads(ctx.exception.read())["error"]
                self.assertIn("--chat-template", error["message"])
                self.assertEqual(error["param"], "chat_template")
                self.assertEqual(self.call("/health", base="http://127.0.0.1:%d" % port)[0], 200)
            # --access-log: a line per request, with its status (civetweb writes a request's line when
            # its connection closes, so the two may come in either order).
            with open(access_log) as f:
                lines = sorted(f.read().splitlines(), key=lambda line: "GET" in line)
            self.assertEqual(len(lines), 2, lines)
            self.assertIn('"POST /v1/chat/completions HTTP/1.1" 400', lines[0])
            self.assertIn('"GET /health HTTP/1.1" 200', lines[1])

    def test_f3a_an_api_key_guards_every_endpoint_but_health(self):
        """--api-key (vLLM's): a request without "Authorization: Bearer <key>", or with another key,
        gets 401 in OpenAI's error shape (TGI's on TGI's routes) and reaches no handler; with the key it is served; GET
        /health (and TGI's GET / and /info) stays open for load balancers. MOE_API_KEY sets the key when no flag does."""
        for args, env in ((["--api-key", "k-old", "--api-key", "s3cret"], None),
                          ([], dict(os.environ, MOE_API_KEY="s3cret"))):
            with own_front(self, self.cluster.address, *args, env=env) as (port, line, _):
                self.assertIn("API key required", line)

                def call(path, key, body=None):
                    return self.call(path, body, base="http://127.0.0.1:%d" % port,
                                     headers={"Authorization": key} if key is not None else {})

                completion = {"prompt": "ROMEO:", "max_tokens": 2, "temperature": 0}
                for path, body in (("/v1/completions", completion), ("/v1/models", None),
                                   ("/tokenize", {"prompt": "ROMEO:"}), ("/v1/nothing", None),
                                   ("/generate", {"inputs": "ROMEO:"}), ("/", {"inputs": "ROMEO:"})):
                    for key, says in ((None, "no API key"), ("Bearer wrong", "not one this server accepts"),
                                      ("s3cret", "not one this server accepts"),
                                      ("Bearer s3cre", "not one this server accepts"),
                                      ("Bearer s3cret2", "not one this server accepts")):
                        status, err = call(path, key, body)
                        self.assertEqual(status, 401, (path, key, err))
                        if path in ("/generate", "/"):  # TGI's routes answer in TGI's error shape
                            self.assertEqual(err["error_type"], "authentication")
                            self.assertIn(says, err["error"])
                            continue
                        self.assertEqual(err["error"]["type"], "authentication_error")
                        self.assertIn(says, err["error"]["message"])
                status, answer = call("/v1/completions", "Bearer s3cret", completion)
                self.assertEqual(status, 200, answer)
                self.assertEqual(answer["usage"]["completion_tokens"], 2)
                self.assertEqual(call("/v1/models", "Bearer s3cret")[0], 200)
                self.assertEqual(call("/v1/nothing", "Bearer s3cret")[0], 404)
                if args:
                    self.assertEqual(call("/v1/models", "Bearer k-old")[0], 200)  # every key given is accepted
                status, health = call("/health", None)
                self.assertEqual((status, health["status"]), (200, "SERVING"))
                self.assertEqual(call("/version", None)[0], 200)  # open, as vLLM's
                self.assertEqual(call("/ping", None)[0], 200)
                self.assertEqual(call("/info", None)[0], 200)  # TGI's, open as there
                self.assertEqual(call("/", None)[0], 200)  # TGI's health check
        r = subprocess.run([OPENAI_BIN, "--coordinator", self.cluster.address, "--api-key="], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--api-key: empty", r.stderr)

    def test_f3c_idle_connections_neither_block_requests_nor_stay(self):
        """Connections that send nothing hold a thread each: 200 of them leave requests served (1,024
        threads by default; before, 64 idle connections stopped the server for 10 minutes), and
        --request-timeout-s closes them once it has passed without their request headers."""
        host, port = self.cluster.openai_address.rsplit(":", 1)
        idle = [socket.create_connection((host, int(port))) for _ in range(200)]
        try:
            status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 2})
            self.assertEqual(status, 200, body)
        finally:
            for s in idle:
                s.close()
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        with own_front(self, self.cluster.address, "--request-timeout-s", "0.5", "--threads", "2",
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))) as (port, _, pid):
            # A descriptor per connection: started with a soft limit of 256 open files, the server
            # raises it towards the hard limit (as vLLM's does), to 65,536 at most.
            with open(f"/proc/{pid}/limits") as f:
                soft = next(line.split()[3] for line in f if line.startswith("Max open files"))
            want = min(65536, hard) if hard != resource.RLIM_INFINITY else 65536
            self.assertEqual(int(soft), want)
            quiet = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # both threads
            for s in quiet:
                s.settimeout(10)
            t0 = time.monotonic()
            self.assertEqual([s.recv(1) for s in quiet], [b"", b""], "closed without an answer")
            self.assertLess(time.monotonic() - t0, 5)
            for s in quiet:
                s.close()
            req = urllib.request.Request("http://127.0.0.1:%d/v1/models" % port)
            with urllib.request.urlopen(req, timeout=10) as r:
                self.assertEqual(r.status, 200)
        r = subprocess.run([OPENAI_BIN, "--coordinator", self.cluster.address, "--request-timeout-s", "0"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--request-timeout-s", r.stderr)

    def test_f3d_out_of_threads_the_front_answers_503_and_lives_on(self):
        """Each request takes threads (its own 8 MB stack, its client watch, a stream's readers). At
        the process's thread limit (here RLIMIT_NPROC 40, for an unprivileged user) the requests that
        get none are answered 503 saying so, and the server serves on (before, a stream's reader that
        could not start ended the process: std::terminate)."""
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user nobody to run the server as")
        if os.geteuid() != 0 or not shutil.which("su") or not os.path.exists("/bin/bash"):
            self.skipTest("needs root, su and bash, to run the server as an unprivileged user with a thread limit")
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)
            binary = os.path.join(tmp, "moe-openai-server")
            shutil.copy(OPENAI_BIN, binary)
            os.chmod(binary, 0o755)
            proc = subprocess.Popen(["su", "nobody", "-s", "/bin/bash", "-c",
                                     f"ulimit -u 40 && exec {binary} --coordinator {self.cluster.address} "
                                     f"--listen 127.0.0.1:0 --threads 12"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                line = next((x for x in proc.stdout if "listening on port" in x), None)
                self.assertIsNotNone(line, "the server did not start under the limit")
                base = "http://127.0.0.1:%d" % int(line.split("listening on port")[1].split(",")[0])
                answers = []

                def ask(i):
                    answers.append(self.call("/v1/completions", {"prompt": ["ROMEO:"] * 8, "max_tokens": 20,
                                                                 "stream": i % 2 == 0}, base=base, raw_answer=True))

                threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                refused = [a for a in answers if a[0] == 503]
                self.assertTrue(refused, answers)
                for status, text in answers:
                    self.assertIn(status, (200, 503), text)
                    if status == 503:
                        self.assertIn("cannot start a thread for this request", text)
                self.assertIsNone(proc.poll(), "the server died")
                self.assertEqual(self.call("/health", base=base)[0], 200)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
                proc.stdout.close()

    def test_f3e_cors_lets_the_allowed_origins_pages_call(self):
        """--allowed-origins (CORS): a browser's preflight (OPTIONS, without the API key) is answered
        204 allowing POST with Authorization; answers, whole and streamed, carry
        Access-Control-Allow-Origin for an allowed Origin only ("*": any). Without the flag no CORS
        header is sent and OPTIONS is refused, so browsers keep other sites' pages out."""
        page = "https://app.example"

        def request(port, method, path, origin, body=None, key=None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {"Content-Type": "application/json"}
            if origin:
                headers["Origin"] = origin
            if method == "OPTIONS":  # a browser's preflight says what it asks for
                headers["Access-Control-Request-Method"] = "POST"
                headers["Access-Control-Request-Headers"] = "authorization, content-type"
            if key:
                headers["Authorization"] = "Bearer " + key
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            r = conn.getresponse()
            r.read()
            conn.close()
            return r.status, r.getheader("Access-Control-Allow-Origin"), r

        completion = {"prompt": "ROMEO:", "max_tokens": 2}
        with own_front(self, self.cluster.address, "--allowed-origins", page, "--api-key", "k") as (port, _, _):
            status, allow, r = request(port, "OPTIONS", "/v1/completions", page)
            self.assertEqual((status, allow), (204, page))
            self.assertIn("POST", r.getheader("Access-Control-Allow-Methods"))
            self.assertIn("Authorization", r.getheader("Access-Control-Allow-Headers"))
            self.assertEqual(request(port, "POST", "/v1/completions", page, completion, "k")[:2], (200, page))
            self.assertEqual(request(port, "POST", "/v1/completions", page, dict(completion, stream=True), "k")[:2],
                             (200, page))
            self.assertEqual(request(port, "POST", "/v1/completions", "https://evil.example", completion, "k")[:2],
                             (200, None))
            self.assertEqual(request(port, "POST", "/v1/completions", page, completion)[:2], (401, page))
            # Another site's preflight gets no allowance (civetweb's own CORS, which allowed any, is off).
            self.assertEqual(request(port, "OPTIONS", "/v1/completions", "https://evil.example")[1], None)
        with own_front(self, self.cluster.address, "--allowed-origins", "*") as (port, _, _):
            self.assertEqual(request(port, "GET", "/v1/models", "https://any.example")[:2], (200, "*"))
        with own_front(self, self.cluster.address) as (port, _, _):
            self.assertEqual(request(port, "POST", "/v1/completions", page, completion)[:2], (200, None))
            self.assertEqual(request(port, "OPTIONS", "/v1/completions", page)[:2], (405, None))

    def test_f3b_a_tool_call_parser_needs_its_marker_in_the_vocabulary(self):
        """--tool-call-parser mistral reads [TOOL_CALLS]; the default model's vocabulary has none, so
        the server refuses to start, saying so; an unknown parser is refused too."""
        for parser, says in (("mistral", "no [TOOL_CALLS] control token"), ("hermes", "is not known")):
            r = subprocess.run([OPENAI_BIN, "--coordinator", self.cluster.address, "--listen", "127.0.0.1:0",
                                "--tool-call-parser", parser], capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(says, r.stderr)

    def test_f4_json_object_answers_are_json_objects(self):
        """response_format json_object: Python's json reads every finished answer as an object (most
        finish), greedy and sampled, whole and streamed, chat and completions; the gRPC API gives the
        same tokens."""
        messages = CHAT_GOLDEN["cases"][1]["messages"]
        fmt = {"type": "json_object"}
        answers = []
        for prompt in ("ROMEO:", "First Citizen:", "JULIET:"):
            for params in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}, {"temperature": 0.8, "top_p": 0.9, "seed": 9}):
                status, body = self.call("/v1/completions", dict(params, prompt=prompt, max_tokens=200,
                                                                 response_format=fmt))
                self.assertEqual(status, 200, body)
                answers.append((body["choices"][0]["text"], body["choices"][0]["finish_reason"]))
                if params["temperature"] == 0:
                    plain = self.call("/v1/completions", dict(params, prompt=prompt, max_tokens=40))[1]
                    with self.assertRaises(ValueError, msg="without the format the model writes verse"):
                        json.loads(plain["choices"][0]["text"])
                    want = self.grpc.generate_choices(prompt, max_tokens=200, temperature=0,
                                                      response_format="json_object")[0]
                    self.assertEqual(want.text, body["choices"][0]["text"])
        status, body = self.call("/v1/chat/completions", {"messages": messages, "max_tokens": 200, "temperature": 0,
                                                          "response_format": fmt})
        self.assertEqual(status, 200, body)
        answers.append((body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"]))
        events = self.stream({"messages": messages, "max_tokens": 200, "temperature": 0, "response_format": fmt},
                             path="/v1/chat/completions")
        streamed = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
        self.assertEqual(streamed, body["choices"][0]["message"]["content"])
        # An object with free keys lets the small model write verse into a key for as long as it likes:
        # most answers finish, and those cut short are still an object's beginning.
        finished = [text for text, reason in answers if reason == "stop"]
        self.assertGreaterEqual(len(finished), len(answers) * 2 // 3, answers)
        for text in finished:
            self.assertIsInstance(json.loads(text), dict, text)
        for text, reason in answers:
            self.assertIn(reason, ("stop", "length"))
            self.assertTrue(text.lstrip().startswith("{"), text)

    def test_f5_json_schema_answers_are_what_the_schema_admits(self):
        """response_format json_schema (and vLLM's guided_json): Python's jsonschema finds every finished
        answer valid, greedy and sampled, for schemas with required and optional properties, enums,
        bounded strings and arrays, unions and a recursive definition."""
        import jsonschema
        schemas = [
            {"type": "object", "properties": {
                "speaker": {"enum": ["ROMEO", "JULIET", "NURSE"]},
                "line": {"type": "string", "minLength": 5, "maxLength": 40},
                "act": {"type": "integer"},
                "mood": {"type": ["string", "null"], "maxLength": 8},
                "cues": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3}},
             "required": ["speaker", "line", "act", "cues"]},
            {"$defs": {"scene": {"type": "object", "properties": {
                "place": {"type": "string", "maxLength": 20},
                "next": {"anyOf": [{"$ref": "#/$defs/scene"}, {"type": "null"}]}},
                "required": ["place", "next"]}},
             "type": "object", "properties": {"play": {"const": "Romeo and Juliet"}, "scene": {"$ref": "#/$defs/scene"}},
             "required": ["play", "scene"]},
        ]
        for i, schema in enumerate(schemas):
            fmt = {"type": "json_schema", "json_schema": {"name": "s%d" % i, "schema": schema, "strict": True}}
            for prompt in ("ROMEO:", "JULIET:"):
                for params in ({"temperature": 0}, {"temperature": 1.0, "seed": 11}):
                    status, body = self.call("/v1/completions", dict(params, prompt=prompt, max_tokens=300,
                                                                     response_format=fmt))
                    self.assertEqual(status, 200, body)
                    text, reason = body["choices"][0]["text"], body["choices"][0]["finish_reason"]
                    self.assertEqual(reason, "stop", text)
                    jsonschema.validate(json.loads(text), schema)
            status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 300, "temperature": 0,
                                                         "guided_json": schema})
            self.assertEqual(status, 200, body)
            jsonschema.validate(json.loads(body["choices"][0]["text"]), schema)
            want = self.grpc.generate_choices("ROMEO:", max_tokens=300, temperature=0, response_format=fmt)[0]
            self.assertEqual(want.text, body["choices"][0]["text"])

    def test_f5b_guided_choice_answers_one_of_the_choices(self):
        """vLLM's guided_choice: every answer is exactly one of the texts, greedy and sampled, chat
        and completions; the gRPC API's TYPE_CHOICE gives the same."""
        choices = ["ROMEO", "JULIET", "the Nurse", "Friar Laurence"]
        seen = set()
        for prompt in ("Who speaks?", "ROMEO:", "O"):
            for params in ({"temperature": 0}, {"temperature": 1.5, "seed": 4}):
                status, body = self.call("/v1/completions", dict(params, prompt=prompt, max_tokens=20,
                                                                 guided_choice=choices))
                self.assertEqual(status, 200, body)
                self.assertIn(body["choices"][0]["text"], choices)
                self.assertEqual(body["choices"][0]["finish_reason"], "stop")
                seen.add(body["choices"][0]["text"])
        status, body = self.call("/v1/chat/completions", {"messages": CHAT_GOLDEN["cases"][0]["messages"],
                                                          "max_tokens": 20, "temperature": 0, "guided_choice": choices})
        self.assertEqual(status, 200, body)
        self.assertIn(body["choices"][0]["message"]["content"], choices)
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 20, "temperature": 0,
                                                     "guided_choice": ["yes", ""]})
        self.assertEqual((status, body["error"]["param"]), (400, "response_format.choices[1]"), body)

    def test_f5c_guided_regex_and_schema_patterns_formats_and_bounds(self):
        """vLLM's guided_regex: every answer matches the whole regex (Python's re.fullmatch), greedy
        and sampled, streamed or not, and the gRPC API's TYPE_REGEX gives the same; a JSON schema with
        a pattern, formats and numeric bounds gets answers that Python's jsonschema, checking formats,
        accepts; vLLM's structured_outputs asks the same, disable_any_whitespace honoured. A regex
        outside the subset is a 400 naming it."""
        import re
        import jsonschema
        regex = r"(ROMEO|JULIET): [A-Z][a-z]{1,10}( [a-z]{1,10}){0,4}[.!?]"
        for params in ({"temperature": 0}, {"temperature": 1.2, "seed": 9}):
            status, body = self.call("/v1/completions", dict(params, prompt="ROMEO:", max_tokens=80, guided_regex=regex))
            self.assertEqual(status, 200, body)
            text = body["choices"][0]["text"]
            self.assertIsNotNone(re.fullmatch(regex, text), text)
            self.assertEqual(body["choices"][0]["finish_reason"], "stop")
            want = self.grpc.generate_choices("ROMEO:", max_tokens=80, guided_regex=regex, **params)[0]
            self.assertEqual(want.text, text)
        streamed = "".join(e["choices"][0]["text"] for e in self.stream({
            "prompt": "O", "max_tokens": 80, "temperature": 0, "guided_regex": regex}) if e.get("choices"))
        self.assertIsNotNone(re.fullmatch(regex, streamed), streamed)
        status, body = self.call("/v1/chat/completions", {"messages": CHAT_GOLDEN["cases"][0]["messages"],
                                                          "max_tokens": 80, "temperature": 0, "guided_regex": regex})
        self.assertEqual(status, 200, body)
        self.assertIsNotNone(re.fullmatch(regex, body["choices"][0]["message"]["content"]), body)
        schema = {"type": "object", "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
            "day": {"type": "string", "format": "date"},
            "id": {"type": "string", "format": "uuid"},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "p": {"type": "number", "minimum": 0, "maximum": 1}},
            "required": ["code", "day", "id", "age", "p"], "additionalProperties": False}
        checker = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        for params in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}):
            status, body = self.call("/v1/completions", dict(params, prompt="ROMEO:", max_tokens=300, response_format={
                "type": "json_schema", "json_schema": {"name": "record", "schema": schema}}))
            self.assertEqual(status, 200, body)
            self.assertEqual(body["choices"][0]["finish_reason"], "stop", body)
            checker.validate(json.loads(body["choices"][0]["text"]))
        # vLLM's structured_outputs (its name since v0.12): the same constraints, and with
        # disable_any_whitespace no whitespace between tokens (the small model's padding has nowhere to go).
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 300, "temperature": 0,
                                                     "structured_outputs": {"json": schema, "disable_any_whitespace": True}})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["finish_reason"], "stop", body)
        text = body["choices"][0]["text"]
        checker.validate(json.loads(text))
        in_string, escaped = False, False
        for ch in text:
            if in_string:
                in_string = escaped or ch != '"'
                escaped = not escaped and ch == "\\"
            else:
                self.assertNotIn(ch, " \n\t\r", text)
                in_string = ch == '"'
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 80, "temperature": 0,
                                                     "structured_outputs": {"regex": regex}})
        self.assertEqual(status, 200, body)
        self.assertIsNotNone(re.fullmatch(regex, body["choices"][0]["text"]), body)
        status, body = self.call("/v1/completions", {"prompt": "x", "max_tokens": 5,
                                                     "structured_outputs": {"structural_tag": "{}"}})
        self.assertEqual((status, body["error"]["param"]), (400, "structured_outputs.structural_tag"), body)
        status, body = self.call("/v1/completions", {"prompt": "x", "max_tokens": 5, "guided_regex": "a(?!b)"})
        self.assertEqual((status, body["error"]["param"]), (400, "response_format.regex"), body)
        self.assertIn("lookaround", body["error"]["message"])

    def test_f5d_guided_grammar(self):
        """vLLM's guided_grammar and structured_outputs.grammar (GBNF): a grammar of a regular language
        gets answers Python's re.fullmatch of the same language accepts, greedy and sampled, streamed
        or not, and the gRPC API's TYPE_GRAMMAR gives the same; a recursive grammar (nested
        s-expressions) gets answers a recursive-descent reader accepts whole, or, cut by max_tokens,
        as a beginning. A bad grammar is a 400 naming its line and column."""
        import re
        grammar = "\n".join([
            'root     ::= speaker ": " word (" " word){0,5} end   # at most six words',
            'speaker  ::= "ROMEO" | "JULIET" | "NURSE"',
            'word     ::= [A-Za-z]{1,10}',
            'end      ::= [.!?]'])
        regex = r"(ROMEO|JULIET|NURSE): [A-Za-z]{1,10}( [A-Za-z]{1,10}){0,5}[.!?]"
        for params in ({"temperature": 0}, {"temperature": 1.2, "seed": 5}):
            status, body = self.call("/v1/completions", dict(params, prompt="ROMEO:", max_tokens=80,
                                                             guided_grammar=grammar))
            self.assertEqual(status, 200, body)
            text = body["choices"][0]["text"]
            self.assertIsNotNone(re.fullmatch(regex, text), text)
            self.assertEqual(body["choices"][0]["finish_reason"], "stop")
            want = self.grpc.generate_choices("ROMEO:", max_tokens=80, guided_grammar=grammar, **params)[0]
            self.assertEqual(want.text, text)
        streamed = "".join(e["choices"][0]["text"] for e in self.stream({
            "prompt": "O", "max_tokens": 80, "temperature": 0, "structured_outputs": {"grammar": grammar}})
            if e.get("choices"))
        self.assertIsNotNone(re.fullmatch(regex, streamed), streamed)
        status, body = self.call("/v1/chat/completions", {"messages": CHAT_GOLDEN["cases"][0]["messages"],
                                                          "max_tokens": 80, "temperature": 0, "guided_grammar": grammar})
        self.assertEqual(status, 200, body)
        self.assertIsNotNone(re.fullmatch(regex, body["choices"][0]["message"]["content"]), body)

        # Recursive: not a regular language, so the reference is a reader of its own.
        sexp = 'root ::= sexp\nsexp ::= "(" [a-z]{1,8} (" " (sexp | [a-z]{1,8}))* ")"'

        def read(t):
            """'whole', 'prefix' (t can still be completed) or 'bad'."""
            i, n = 0, len(t)

            def atom():
                nonlocal i
                start = i
                while i < n and "a" <= t[i] <= "z" and i - start < 8:
                    i += 1
                return i > start

            def expr():  # True: read whole; None: t ended inside; False: bad
                nonlocal i
                if i == n:
                    return None
                if t[i] != "(":
                    return False
                i += 1
                if i == n:
                    return None
                if not atom():
                    return False
                while True:
                    if i == n:
                        return None
                    if t[i] == ")":
                        i += 1
                        return True
                    if t[i] != " ":
                        return False
                    i += 1
                    if i == n:
                        return None
                    if t[i] == "(":
                        r = expr()
                        if r is not True:
                            return r
                    elif not atom():
                        return False
            r = expr()
            return "prefix" if r is None else "whole" if r and i == n else "bad"

        self.assertEqual([read(x) for x in ("(a (b c) d)", "(a (b", "(a)", "(a))", "(A)", "()")],
                         ["whole", "prefix", "whole", "bad", "bad", "bad"])  # the reader itself
        for params in ({"temperature": 0}, {"temperature": 1.0, "seed": 1}, {"temperature": 1.0, "seed": 2}):
            status, body = self.call("/v1/completions", dict(params, prompt="KING:", max_tokens=40, guided_grammar=sexp))
            self.assertEqual(status, 200, body)
            choice = body["choices"][0]
            verdict = read(choice["text"])
            self.assertEqual(verdict, "whole" if choice["finish_reason"] == "stop" else "prefix", choice)
        status, body = self.call("/v1/completions", {"prompt": "x", "max_tokens": 5,
                                                     "guided_grammar": 'root ::= "a" | b\nc ::= "c"'})
        self.assertEqual((status, body["error"]["param"]), (400, "response_format.grammar"), body)
        self.assertIn("rule 'b' is used but never defined", body["error"]["message"])
        status, body = self.call("/v1/completions", {"prompt": "x", "max_tokens": 5,
                                                     "structured_outputs": {"grammar": 'root ::= "a" [b-'}})
        self.assertEqual((status, body["error"]["param"]), (400, "response_format.grammar"), body)
        self.assertIn("line 1, column", body["error"]["message"])

    def test_f6_tool_choice_answers_with_tool_calls_the_tools_schemas_admit(self):
        """A named function and tool_choice "required": the answer's tool_calls name the tools and
        their arguments are what the named tools' parameters schemas admit (Python's jsonschema);
        streamed, the same calls arrive as deltas."""
        import jsonschema
        weather = {"type": "object", "properties": {
            "city": {"type": "string", "minLength": 2, "maxLength": 20},
            "days": {"type": "integer"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]}
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "the forecast",
                                                   "parameters": weather}},
                 {"type": "function", "function": {"name": "get_time", "parameters": {
                     "type": "object", "properties": {"zone": {"type": "string", "maxLength": 10}}, "required": ["zone"]}}}]
        messages = CHAT_GOLDEN["cases"][0]["messages"]
        named = {"type": "function", "function": {"name": "get_weather"}}
        for params in ({"temperature": 0}, {"temperature": 1.0, "seed": 2}):
            status, body = self.call("/v1/chat/completions", dict(params, messages=messages, tools=tools,
                                                                  tool_choice=named, max_tokens=300))
            self.assertEqual(status, 200, body)
            choice = body["choices"][0]
            self.assertEqual(choice["finish_reason"], "stop", choice)
            self.assertEqual(choice["message"]["content"], "")
            [call] = choice["message"]["tool_calls"]
            self.assertEqual((call["type"], call["function"]["name"]), ("function", "get_weather"))
            self.assertTrue(call["id"].startswith("chatcmpl-tool-"), call["id"])
            jsonschema.validate(json.loads(call["function"]["arguments"]), weather)
            # Streamed, the arguments arrive as deltas: the call's id and name first, then text that
            # adds up to the whole answer's arguments.
            events = self.stream(dict(params, messages=messages, tools=tools, tool_choice=named, max_tokens=300),
                                 path="/v1/chat/completions")
            # (How many deltas depends on timing: the coordinator sends the tokens it has in one message.
            # The split into deltas is tested byte by byte in openai_protocol_test.)
            calls = [tc for e in events[1:] for c in e["choices"] for tc in c["delta"].get("tool_calls", [])]
            self.assertGreaterEqual(len(calls), 1, calls)
            self.assertEqual((calls[0]["function"]["name"], calls[0]["type"]), ("get_weather", "function"))
            self.assertTrue(calls[0]["id"].startswith("chatcmpl-tool-"))
            self.assertTrue(all("id" not in tc and tc["index"] == 0 for tc in calls[1:]), calls)
            self.assertEqual("".join(tc["function"]["arguments"] for tc in calls), call["function"]["arguments"])
        # "required": the default model pads JSON with whitespace and goes on adding calls, so the
        # whitespace tokens are held back and "]" favoured (logit_bias) for the list to end in 300.
        # Its byte-fallback ids are 3 + the byte; "▁" is 1984.
        bias = {"1984": -100, "35": -100, "13": -100, "12": -100, "16": -100, "96": 50}
        status, text = self.call("/detokenize", {"tokens": [1984, 35, 13, 12, 16, 96]})
        self.assertEqual(text["prompt"], " \n\t\r]", text)  # (a text's leading "\u2581" decodes to nothing)
        required = {"messages": messages, "tools": tools, "tool_choice": "required", "max_tokens": 300,
                    "temperature": 0, "logit_bias": bias}
        status, body = self.call("/v1/chat/completions", required)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["finish_reason"], "stop", body)
        calls = body["choices"][0]["message"]["tool_calls"]
        self.assertGreaterEqual(len(calls), 1, body)
        # Each call's arguments are what its own tool's parameters admit (the calls are a tagged union).
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
        for call in calls:
            self.assertIn(call["function"]["name"], schemas)
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
        # parallel_tool_calls: false: exactly one call.
        status, body = self.call("/v1/chat/completions", dict(required, parallel_tool_calls=False))
        self.assertEqual(status, 200, body)
        self.assertEqual(len(body["choices"][0]["message"]["tool_calls"]), 1, body)
        status, body = self.call("/v1/chat/completions", dict(required, tool_choice="auto"))
        self.assertEqual((status, body["error"]["param"]), (400, "tool_choice"), body)
        self.assertIn("--tool-call-parser", body["error"]["message"])
        # Streamed, each call's id and name come first, then its arguments as they are written; they add
        # up to the whole answer's calls.
        events = self.stream(required, path="/v1/chat/completions")
        entries = [tc for e in events[1:] for c in e["choices"] for tc in c["delta"].get("tool_calls", [])]
        self.assertGreaterEqual(len(entries), len(calls), entries)
        streamed = []
        for tc in entries:
            if "id" in tc:
                self.assertEqual((tc["index"], tc["type"]), (len(streamed), "function"), tc)
                self.assertTrue(tc["id"].startswith("chatcmpl-tool-"))
                streamed.append(dict(tc["function"]))
            else:
                self.assertNotIn("name", tc["function"])
                streamed[tc["index"]]["arguments"] += tc["function"]["arguments"]
        self.assertEqual(streamed, [c["function"] for c in calls])
        self.assertEqual(events[-1]["choices"][0]["finish_reason"], "stop")

    def test_e_leaving_a_stream_cancels_the_request(self):
        host, port = self.cluster.openai_address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "ROMEO:", "max_tokens": 3000, "temperature": 0,
                                                             "ignore_eos": True, "stream": True}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertTrue(r.readline().startswith(b"data: "))
        conn.close()  # the server notices at its next write and cancels the gRPC call
        wait_until_idle(self.grpc, 20, "the request still runs after the client left")

    def test_e2_leaving_a_whole_answer_cancels_the_request(self):
        """A whole (not streamed) answer writes nothing until it is done; a client that gives up
        before (closes its connection) still cancels the request, as vLLM aborts it: the cluster is
        idle long before the 3,000 tokens it asked for could have been made, and a client that
        waits for a shorter request gets its answer."""
        s = self.samples["ROMEO:"]
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": len(s["greedy_ids"]),
                                                     "temperature": 0})
        self.assertEqual((status, body["choices"][0]["text"]), (200, s["greedy_text"][len("ROMEO:"):]))
        host, port = self.cluster.openai_address.rsplit(":", 1)
        for body in ({"prompt": "ROMEO:", "max_tokens": 3000, "ignore_eos": True},
                     {"prompt": ["ROMEO:", "JULIET:"], "max_tokens": 3000, "ignore_eos": True, "n": 2}):
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
            deadline = time.monotonic() + 10
            while self.grpc.stats().requests_running == 0:
                self.assertLess(time.monotonic(), deadline, "the request never ran")
                time.sleep(0.02)
            t0 = time.monotonic()
            conn.close()
            wait_until_idle(self.grpc, 20, "the request still runs after its client left")
            print(f"[ info ] cancelled {time.monotonic() - t0:.2f} s after the client left", file=sys.stderr)
            self.assertLess(time.monotonic() - t0, 2.0)

    def tgi_events(self, path, body):
        """(HTTP status, the JSON of each server-sent event) of a TGI stream."""
        status, raw = self.call(path, body, raw_answer=True)
        events = [json.loads(line[len("data:"):]) for line in raw.splitlines() if line.startswith("data:")]
        self.assertNotIn("[DONE]", raw, "TGI's streams end without [DONE]")
        return status, events

    def test_g0_tgis_generate_api_answers_as_the_grpc_api_does(self):
        """Hugging Face TGI's own API (POST /generate, /generate_stream and /, GET /info): greedy answers are
        the samples' text with their token ids and the gRPC API's logprobs in TGI's details; sampling with a
        seed is the gRPC API's with that seed; TGI's defaults (POST / samples and returns the full text, as a
        list of one), stop sequences kept, grammars, and its validation errors (422, or an event of a 200 stream)."""
        s = self.samples["ROMEO:"]
        n = len(s["greedy_ids"])
        want = self.grpc.generate_full("ROMEO:", max_tokens=n, temperature=0, logprobs=0)
        status, body = self.call("/generate", {"inputs": "ROMEO:", "parameters": {
            "max_new_tokens": n, "details": True, "decoder_input_details": True, "top_n_tokens": 2}})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["generated_text"], s["greedy_text"][len("ROMEO:"):])
        d = body["details"]
        self.assertEqual((d["finish_reason"], d["generated_tokens"], d["seed"]), ("length", n, None))
        self.assertEqual([t["id"] for t in d["tokens"]], s["greedy_ids"])
        self.assertEqual("".join(t["text"] for t in d["tokens"]), body["generated_text"])
        self.assertEqual([t["special"] for t in d["tokens"]], [False] * n)
        for t, lp in zip(d["tokens"], want.logprobs):
            self.assertAlmostEqual(t["logprob"], lp.logprob, places=5)
        self.assertEqual(len(d["top_tokens"]), n)
        self.assertEqual([top[0]["id"] for top in d["top_tokens"]], s["greedy_ids"], "greedy: the most probable")
        self.assertEqual([t["id"] for t in d["prefill"]], s["prompt_ids"])
        self.assertIsNone(d["prefill"][0]["logprob"])
        self.assertEqual("".join(t["text"] for t in d["prefill"]).lstrip(), "ROMEO:")
        status, plain = self.call("/generate", {"inputs": "ROMEO:", "parameters": {"max_new_tokens": n}})
        self.assertEqual(plain, {"generated_text": body["generated_text"]}, "no details unless asked")

        # Streamed: one event per token, the last with the whole text and the details; no [DONE].
        status, events = self.tgi_events("/generate_stream", {"inputs": "ROMEO:", "parameters": {
            "max_new_tokens": n, "details": True}})
        self.assertEqual(status, 200)
        self.assertEqual([e["index"] for e in events], list(range(1, n + 1)))
        self.assertEqual([e["token"]["id"] for e in events], s["greedy_ids"])
        self.assertEqual([e["generated_text"] for e in events[:-1]], [None] * (n - 1))
        self.assertEqual(events[-1]["generated_text"], body["generated_text"])
        self.assertEqual("".join(e["token"]["text"] for e in events), body["generated_text"])
        self.assertEqual(events[-1]["details"]["generated_tokens"], n)
        self.assertEqual(events[-1]["details"]["input_length"], len(s["prompt_ids"]))

        # POST / (huggingface_hub's InferenceClient): without parameters TGI samples (a seed of its own,
        # reported) and returns the full text, as a list of one; a given seed is the gRPC API's sampling.
        status, body = self.call("/", {"inputs": "ROMEO:", "parameters": {"do_sample": True, "seed": 5,
                                                                           "max_new_tokens": 8, "details": True}})
        self.assertEqual(status, 200, body)
        self.assertEqual(len(body), 1)
        sampled = self.grpc.generate_full("ROMEO:", max_tokens=8, temperature=1.0, seed=5)
        self.assertEqual(body[0]["generated_text"], "ROMEO:" + sampled.text)
        self.assertEqual(body[0]["details"]["seed"], 5)
        status, body = self.call("/", {"inputs": "ROMEO:"})
        self.assertEqual(status, 200, body)
        self.assertTrue(body[0]["generated_text"].startswith("ROMEO:"))
        status, events = self.tgi_events("/", {"inputs": "ROMEO:", "stream": True, "parameters": {"max_new_tokens": 3}})
        self.assertEqual((status, len(events)), (200, 3))
        status, health = self.call("/")
        self.assertEqual(status, 200, health)

        # best_of: that many sampled (seeds s, s + 1, ...: each the gRPC API's sampling with its seed), the
        # highest mean token logprob answered, the others in best_of_sequences.
        status, body = self.call("/generate", {"inputs": "ROMEO:", "parameters": {
            "best_of": 3, "do_sample": True, "max_new_tokens": 6, "details": True}})
        self.assertEqual(status, 200, body)
        seqs = [dict(body["details"], generated_text=body["generated_text"])] + body["details"]["best_of_sequences"]
        self.assertEqual(len(seqs), 3)
        seeds = sorted(q["seed"] for q in seqs)
        self.assertEqual(seeds, list(range(seeds[0], seeds[0] + 3)))
        means = []
        for q in seqs:
            want = self.grpc.generate_full("ROMEO:", max_tokens=6, temperature=1.0, seed=q["seed"], logprobs=0)
            self.assertEqual(q["generated_text"], want.text)
            self.assertEqual([t["id"] for t in q["tokens"]], list(want.token_ids))
            means.append(sum(t["logprob"] for t in q["tokens"]) / len(q["tokens"]))
        self.assertEqual(means[0], max(means), "the answer is the most probable per token")

        # A stop sequence stays in TGI's text; a regex grammar constrains it.
        full = s["greedy_text"][len("ROMEO:"):]
        stop = full[5:9]
        status, body = self.call("/generate", {"inputs": "ROMEO:", "parameters": {"max_new_tokens": n, "stop": [stop],
                                                                                  "details": True}})
        self.assertEqual(body["generated_text"], full[:full.find(stop) + len(stop)])
        self.assertEqual(body["details"]["finish_reason"], "stop_sequence")
        status, body = self.call("/generate", {"inputs": "ROMEO:", "parameters": {
            "max_new_tokens": 6, "grammar": {"type": "regex", "value": "[a-z]+"}}})
        self.assertEqual(status, 200, body)
        self.assertRegex(body["generated_text"], "^[a-z]+$")

        # TGI's validation: 422 with its message; a stream's refusal is an event of a 200 stream.
        for params, message in (({"temperature": 0}, "`temperature` must be strictly positive"),
                                ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
                                ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
                                ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
                                ({"typical_p": 0.5}, "`typical_p`")):
            status, err = self.call("/generate", {"inputs": "ROMEO:", "parameters": params})
            self.assertEqual(status, 422, err)
            self.assertEqual(err["error_type"], "validation")
            self.assertIn(message, err["error"])
            self.assertTrue(err["error"].startswith("Input validation error: "), err)
        status, events = self.tgi_events("/generate_stream", {"inputs": "ROMEO:", "parameters": {"temperature": 0}})
        self.assertEqual(status, 200)
        self.assertEqual([e["error_type"] for e in events], ["validation"])
        status, err = self.call("/generate", {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 100000}})
        self.assertEqual((status, err["error_type"]), (422, "validation"), err)
        # Refusals before the request is read are in TGI's shape on its routes too: a wrong method, a
        # body over the front's limit, a body nested too deeply.
        for path in ("/generate", "/generate_stream"):
            status, err = self.call(path, method="GET")
            self.assertEqual((status, err["error_type"]), (405, "validation"), err)
            self.assertIn("POST", err["error"])
        status, err = self.call("/generate", raw=b'{"inputs": "' + b"a" * (17 << 20) + b'"}')
        self.assertEqual((status, err["error_type"]), (413, "validation"), err)
        self.assertIn("16 MiB", err["error"])
        status, err = self.call("/", raw=b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}")
        self.assertEqual((status, err["error_type"]), (422, "validation"), err)
        self.assertTrue(err["error"].startswith("Input validation error: "), err)

        status, info = self.call("/info")
        self.assertEqual(status, 200, info)
        status, models = self.call("/v1/models")
        self.assertEqual(info["model_id"], MODEL)
        self.assertEqual(info["max_total_tokens"], models["data"][0]["max_model_len"])
        self.assertEqual(info["model_pipeline_tag"], "text-generation")

    def test_g1_tgis_tokenize_and_chat_tokenize_place_each_token_as_transformers(self):
        """TGI's POST /tokenize ({"inputs"}: /generate's body) answers each token's id, the bytes
        [start, stop) of the inputs it came from and those bytes as text, where transformers' fast
        tokenizer places them (offsets_golden.json, there in characters: spaces at the ends,
        byte-fallback pieces, special tokens written out); its parameters are not read (TGI's own
        ignores truncate there); add_special_tokens false adds no BOS (this model's config adds none
        either way). /chat_tokenize: the chat template's text (transformers' rendering,
        chat_golden.json) and its tokens, whatever model the body names (TGI ignores it). Errors in
        TGI's shape; vLLM's /tokenize shares the path."""
        def in_bytes(text, offsets):
            return [[len(text[:a].encode()), len(text[:b].encode())] for a, b in offsets]

        for case in OFFSETS_GOLDEN:
            text = case["text"]
            status, tokens = self.call("/tokenize", {"inputs": text})
            self.assertEqual(status, 200, tokens)
            self.assertEqual([t["id"] for t in tokens], case["ids"], text)
            self.assertEqual([[t["start"], t["stop"]] for t in tokens], in_bytes(text, case["offsets"]), text)
            self.assertEqual([t["text"] for t in tokens], [text[a:b] for a, b in case["offsets"]], text)
        case = next(c for c in OFFSETS_GOLDEN if "<unk>" in c["text"])
        status, tokens = self.call("/tokenize", {"inputs": case["text"], "parameters": {"truncate": 3, "max_new_tokens": 5}})
        self.assertEqual(status, 200, tokens)
        self.assertEqual([t["id"] for t in tokens], case["ids"])
        status, same = self.call("/tokenize", {"inputs": case["text"], "add_special_tokens": False})
        self.assertEqual([t["id"] for t in same], case["ids"])

        chat = CHAT_GOLDEN["cases"][0]
        status, body = self.call("/chat_tokenize", {"model": "tgi", "messages": chat["messages"]})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["templated_text"], chat["prompt_text"])
        self.assertEqual([t["id"] for t in body["tokenize_response"]], chat["prompt_ids"])
        placed = next(c for c in OFFSETS_GOLDEN if c["text"] == chat["prompt_text"])
        self.assertEqual([[t["start"], t["stop"]] for t in body["tokenize_response"]],
                         in_bytes(chat["prompt_text"], placed["offsets"]))

        for path, bad, says in (("/tokenize", {"inputs": 7}, "`inputs` must be a string"),
                                ("/tokenize", {"inputs": "x", "parameters": 0}, "`parameters`"),
                                ("/tokenize", {"inputs": "x", "add_special_tokens": "no"}, "`add_special_tokens`"),
                                ("/chat_tokenize", {"messages": "hi"}, "messages")):
            status, err = self.call(path, bad)
            self.assertEqual(status, 422, err)
            self.assertEqual(err["error_type"], "validation", err)
            self.assertIn(says, err["error"])
        status, err = self.call("/tokenize", {"prompt": 7})  # vLLM's body: vLLM's error shape
        self.assertEqual(status, 400, err)
        self.assertIn("prompt", err["error"]["message"])

    def test_g2_special_tokens_written_in_a_prompt_are_their_ids(self):
        """A text prompt is tokenised as transformers' tokenizer (vLLM's, TGI's) encodes it: "<s>", "</s>"
        and "<unk>" written in it become their ids (offsets_golden.json), on /tokenize, /v1/completions
        (the prompt ids it answers with return_token_ids and its usage) and TGI's /generate (its prefill);
        the gRPC API keeps plain text unless asked (Prompt.parse_special_tokens)."""
        case = next(c for c in OFFSETS_GOLDEN if "<unk>" in c["text"])
        text, want = case["text"], case["ids"]
        self.assertIn(1, want)
        status, tokens = self.call("/tokenize", {"prompt": text})
        self.assertEqual((status, tokens["tokens"]), (200, want), tokens)
        status, answer = self.call("/v1/completions", {"prompt": text, "max_tokens": 2, "temperature": 0,
                                                       "return_token_ids": True})
        self.assertEqual(status, 200, answer)
        self.assertEqual(answer["choices"][0]["prompt_token_ids"], want)
        self.assertEqual(answer["usage"]["prompt_tokens"], len(want))
        status, body = self.call("/generate", {"inputs": text, "parameters": {
            "max_new_tokens": 2, "decoder_input_details": True}})
        self.assertEqual(status, 200, body)
        self.assertEqual([t["id"] for t in body["details"]["prefill"]], want)
        self.assertNotEqual(self.grpc.tokenize(text), want, "gRPC text stays plain text by default")
        self.assertEqual(self.grpc.tokenize(text, parse_special_tokens=True), want)

    def test_g_one_api_key_guards_both_front_doors(self):
        """MOE_API_KEY in the launcher's environment: the coordinator's public gRPC API answers
        UNAUTHENTICATED without it (health checking stays open), moe-openai-server answers 401
        without it and presents it to the coordinator itself, and the clients send it from their
        environment (moe-client) or their api_key (the Python client)."""
        c = LaunchedCluster(["--np", "1", "--openai-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
                            extra_env={"MOE_API_KEY": "k1"})
        try:
            c.start()
            sample = self.samples["ROMEO:"]
            with MoeClient(c.address, timeout=60, api_key="") as bare:
                with self.assertRaises(grpc.RpcError) as ctx:
                    bare.model_info()
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                self.assertIn("no API key", ctx.exception.details())
                self.assertEqual(bare.health(), "SERVING")
            with MoeClient(c.address, timeout=60, api_key="k2") as wrong:
                with self.assertRaises(grpc.RpcError) as ctx:
                    wrong.generate_text("ROMEO:", max_tokens=4)
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            with MoeClient(c.address, timeout=60, api_key="k1") as keyed:
                text = keyed.generate_text("ROMEO:", max_tokens=8, temperature=0)
                self.assertTrue(text and sample["greedy_text"].startswith("ROMEO:" + text), text)
            client = os.path.join(BUILD_DIR, "clients", "moe-client")
            env = {k: v for k, v in os.environ.items() if k != "MOE_API_KEY"}
            for key, code in (("k1", 0), (None, 1)):
                r = subprocess.run([client, "--server", c.address, "generate", "--prompt", "ROMEO:", "--max-tokens", "4"],
                                   capture_output=True, text=True, timeout=60,
                                   env=dict(env, MOE_API_KEY=key) if key else env)
                self.assertEqual(r.returncode, code, r.stderr)
                if code:
                    self.assertIn("UNAUTHENTICATED", r.stderr)
            base = "http://" + c.openai_address
            body = {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0}
            self.assertEqual(self.call("/v1/completions", body, base=base)[0], 401)
            status, answer = self.call("/v1/completions", body, base=base, headers={"Authorization": "Bearer k1"})
            self.assertEqual(status, 200, answer)
            self.assertTrue(sample["greedy_text"].startswith("ROMEO:" + answer["choices"][0]["text"]))
            # The key check's refusal counts in the front's request metrics (/metrics needs no key).
            status, metrics = self.call("/metrics", base=base, raw_answer=True)
            self.assertEqual(status, 200, metrics)
            for status_class in ("2xx", "4xx"):
                self.assertIn('http_requests_total{handler="/v1/completions",method="POST",status="%s"} 1\n' % status_class,
                              metrics)
        finally:
            c.kill_everything()

    def test_y_a_front_that_dies_is_started_again(self):
        """The launcher watches moe-openai-server as it watches the coordinator and mpirun: killed
        (SIGKILL), it is started again (listening anew; with port 0 on a new port, printed as
        before) and serves the same greedy text; the gRPC API served throughout."""
        c = self.cluster
        os.kill(c.openai_pid, signal.SIGKILL)
        c.wait_for(r"moe-openai-server exited unexpectedly \(status 137\): starting it again", 30)
        self.assertEqual(self.grpc.health(), "SERVING")
        c.openai_pid = int(c.wait_for(r"openai pid (\d+)", 30).group(1))
        c.openai_address = c.wait_for(r"openai on (\S+)", 30).group(1)
        type(self).base = "http://" + c.openai_address
        s = self.samples["ROMEO:"]
        status, body = self.call("/v1/completions", {"prompt": "ROMEO:", "max_tokens": len(s["greedy_ids"]),
                                                     "temperature": 0})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["text"], s["greedy_text"][len("ROMEO:"):])

    def test_z_sigterm_stops_everything(self):
        c = self.cluster
        # A long stream in flight: stopping the server cancels it (the client sees the stream end)
        # instead of waiting it out.
        host, port = c.openai_address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "ROMEO:", "max_tokens": 4000, "temperature": 0,
                                                             "ignore_eos": True, "stream": True}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        self.assertTrue(r.readline().startswith(b"data: "))
        rest = []
        reader = threading.Thread(target=lambda: rest.append(r.read().decode()))  # a client reading on
        reader.start()
        # And a whole answer waiting on the cluster: the stop cancels its call too, and it is told
        # so with a 503 (which clients retry), not a 499 meant for clients that left.
        whole = []
        waiter = threading.Thread(target=lambda: whole.append(self.call("/v1/completions", {
            "prompt": "JULIET:", "max_tokens": 4000, "temperature": 0, "ignore_eos": True})))
        waiter.start()
        deadline = time.monotonic() + 10
        while self.grpc.stats().requests_running < 2:
            self.assertLess(time.monotonic(), deadline, "the whole request never ran")
            time.sleep(0.02)
        t0 = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)
        reader.join(timeout=15)
        waiter.join(timeout=15)
        ended = time.monotonic() - t0
        self.assertFalse(reader.is_alive(), "the stream still runs 15 s after SIGTERM")
        self.assertFalse(waiter.is_alive(), "the whole request still waits 15 s after SIGTERM")
        status, err = whole[0]
        self.assertEqual(status, 503, err)
        self.assertIn("the server is stopping", err["error"]["message"])
        print(f"[ info ] the stream ended {ended:.2f} s after SIGTERM", file=sys.stderr)
        self.assertTrue(rest[0].rstrip().endswith("data: [DONE]"), rest[0][-300:])
        self.assertIn("the server is stopping", rest[0], "the cancelled stream says so before [DONE]")
        conn.close()
        try:
            status = c.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.fail("the launcher did not exit after SIGTERM\n" + c.log_text())
        c.wait_for(r"openai server stopped \(status 0\)", 5)
        stopped = c.wait_for(r"stopped \(coordinator status (\S+), mpirun status (\S+)\)", 5)
        self.assertEqual(stopped.groups(), ("0", "0"), c.log_text())
        self.assertEqual(status, 0, c.log_text())
        self.assertFalse(pid_exists(c.openai_pid))
        self.assertEqual(c.leftovers(), [], "processes left behind")

    def test_z1_request_chat_templates_need_the_trust_flag(self):
        """vLLM's --trust-request-chat-template: without it a request's own chat_template is refused
        (400 naming the flag) on every route that renders one; the front's template still serves."""
        template = "{% for m in messages %}{{ m['content'] }}|{% endfor %}"
        messages = [{"role": "user", "content": "ROMEO: speak"}]
        with own_front(self, self.cluster.address, "--chat-template=" + CHAT_TEMPLATE) as (port, _, _):
            base = "http://127.0.0.1:%d" % port
            for path, body in (("/v1/chat/completions", {"messages": messages, "max_tokens": 1}),
                               ("/tokenize", {"messages": messages}),
                               ("/v1/responses", {"input": "ROMEO: speak", "max_output_tokens": 1})):
                status, err = self.call(path, dict(body, chat_template=template), base=base)
                self.assertEqual(status, 400, (path, err))
                self.assertIn("--trust-request-chat-template", json.dumps(err), path)
                status, ok = self.call(path, body, base=base)
                self.assertEqual(status, 200, (path, ok))
        # The trusting front (this class's cluster) renders it.
        status, tokens = self.call("/tokenize", {"messages": messages, "chat_template": template, "add_special_tokens": False})
        self.assertEqual(status, 200, tokens)
        status, plain = self.call("/tokenize", {"prompt": "ROMEO: speak|", "add_special_tokens": False})
        self.assertEqual(tokens["tokens"], plain["tokens"])
        r = subprocess.run([OPENAI_BIN, "--coordinator", self.cluster.address, "--trust-request-chat-template=1"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2, r.stderr)


class OwnClusterCase(unittest.TestCase):
    """A test class with a cluster of its own (cls.cluster, cls.base: its front) over a folder it made
    (cls.folder), which tearDownClass removes."""

    @classmethod
    def tearDownClass(cls):
        cls.cluster.kill_everything()
        shutil.rmtree(cls.folder, ignore_errors=True)

    def post(self, path, body):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())


class QueuedPromptsEndToEnd(OwnClusterCase):
    """One running sequence a rank (--max-running-per-rank 1, 2 ranks): a streamed batch of three
    long prompts runs two at once. Its answer starts once the coordinator has accepted every prompt
    (Generate's initial metadata), as vLLM's does once a request is checked: the running prompts'
    chunks flow while the third waits for a free rank, instead of all coming in one burst when it
    starts."""

    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp(prefix="moe_queued_")
        cls.cluster = LaunchedCluster(["--openai-listen", "127.0.0.1:0", "--coordinator-arg=--max-running-per-rank=1"])
        cls.cluster.start_or_kill()
        cls.base = "http://" + cls.cluster.openai_address

    def test_running_prompts_stream_while_another_waits(self):
        body = {"prompt": ["ROMEO:", "JULIET:", "KING HENRY:"], "max_tokens": 400, "ignore_eos": True,
                "temperature": 0, "stream": True}
        req = urllib.request.Request(self.base + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        first_seen, last_seen = {}, {}
        with urllib.request.urlopen(req, timeout=120) as r:
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.monotonic()
                for c in json.loads(line[len("data: "):])["choices"]:
                    first_seen.setdefault(c["index"], now)
                    last_seen[c["index"]] = now
        self.assertEqual(sorted(first_seen), [0, 1, 2])
        # The prompt that waited starts after one of the others has finished (400 decode steps).
        waited = max(first_seen, key=first_seen.get)
        ran = [i for i in (0, 1, 2) if i != waited]
        self.assertLessEqual(min(last_seen[i] for i in ran), first_seen[waited] + 0.05)
        # ... and the running prompts' chunks were not held back until then.
        for i in ran:
            self.assertGreater(first_seen[waited] - first_seen[i], 0.1,
                               "prompt %d's first chunk came with the waiting prompt's first (%s)" % (i, first_seen))


class GenerationConfigEndToEnd(OwnClusterCase):
    """The model folder's generation_config.json, as vLLM's --generation-config auto reads it: its
    temperature 0 makes a completion that leaves temperature unset greedy (samples.json's text, where
    the API's own default of 1 samples), its max_new_tokens is a chat's max_tokens where the request
    gives none, and a completion without max_tokens keeps OpenAI's 16."""

    @classmethod
    def setUpClass(cls):
        cls.samples = load_samples()
        cls.folder = tempfile.mkdtemp(prefix="moe_generation_config_")
        for name in os.listdir(MODEL_DIR):
            os.symlink(os.path.join(MODEL_DIR, name), os.path.join(cls.folder, name))
        with open(os.path.join(cls.folder, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.0, "max_new_tokens": 5}, f)
        cls.cluster = LaunchedCluster(["--openai-listen", "127.0.0.1:0", "--openai-arg", "--chat-template=" + CHAT_TEMPLATE],
                                      model_dir=cls.folder)
        cls.cluster.start_or_kill()
        cls.base = "http://" + cls.cluster.openai_address


    def test_defaults_fill_what_requests_leave_unset(self):
        full = self.samples["ROMEO:"]["greedy_text"][len("ROMEO:"):]
        body = self.post("/v1/completions", {"prompt": "ROMEO:"})
        self.assertEqual(body["usage"]["completion_tokens"], 16, "OpenAI's default, not max_new_tokens")
        self.assertTrue(full.startswith(body["choices"][0]["text"]), body)
        self.assertGreater(len(body["choices"][0]["text"]), 10)
        sampled = self.post("/v1/completions", {"prompt": "ROMEO:", "temperature": 1.0, "seed": 5})
        self.assertNotEqual(sampled["choices"][0]["text"], body["choices"][0]["text"], "the request's own temperature")
        messages = [{"role": "user", "content": "ROMEO: speak, good nurse"}]
        chat = self.post("/v1/chat/completions", {"messages": messages})
        self.assertEqual(chat["usage"]["completion_tokens"], 5, chat)
        self.assertEqual(chat["choices"][0]["finish_reason"], "length")
        chat = self.post("/v1/chat/completions", {"messages": messages, "max_tokens": 8})
        self.assertEqual(chat["usage"]["completion_tokens"], 8, chat)
        # "max_tokens": null is vLLM's None: the context's room within max_new_tokens, per prompt.
        body = self.post("/v1/completions", {"prompt": ["ROMEO:", "JULIET:"], "max_tokens": None})
        self.assertEqual([c["finish_reason"] for c in body["choices"]], ["length", "length"], body)
        self.assertEqual(body["usage"]["completion_tokens"], 10, body)


class GenerationConfigDirEndToEnd(OwnClusterCase):
    """moe-coordinator --generation-config DIR (vLLM's): DIR's sampling defaults (temperature 0:
    samples.json's greedy tokens) and its eos_token_id, which vLLM adds to every request's
    stop_token_ids: the completion ends there (finish_reason "stop", stop_reason the id, its text
    left out) unless the request sets ignore_eos."""

    @classmethod
    def setUpClass(cls):
        cls.samples = load_samples()
        cls.folder = tempfile.mkdtemp(prefix="moe_generation_config_dir_")
        # The third greedy token after "ROMEO:" (samples.json's greedy_ids).
        cls.greedy = cls.samples["ROMEO:"]["greedy_ids"]
        with open(os.path.join(cls.folder, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": [2, cls.greedy[2]], "temperature": 0.0}, f)
        cls.cluster = LaunchedCluster(["--openai-listen", "127.0.0.1:0", "--coordinator-arg=--generation-config=" + cls.folder])
        cls.cluster.start_or_kill()
        cls.base = "http://" + cls.cluster.openai_address


    def test_dir_end_ids_stop_every_request(self):
        body = self.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 16, "return_token_ids": True})
        choice = body["choices"][0]
        self.assertEqual(choice["token_ids"], self.greedy[:3], body)
        self.assertEqual((choice["finish_reason"], choice["stop_reason"]), ("stop", self.greedy[2]), body)
        before_stop = self.post("/detokenize", {"tokens": self.greedy[:2]})["prompt"]
        self.assertEqual(choice["text"], before_stop, "the stop token's text is left out")
        body = self.post("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 16, "ignore_eos": True,
                                             "return_token_ids": True})
        self.assertEqual(body["choices"][0]["token_ids"], self.greedy[:16], body)
        self.assertEqual(body["choices"][0]["finish_reason"], "length")


if __name__ == "__main__":
    unittest.main(verbosity=2)
