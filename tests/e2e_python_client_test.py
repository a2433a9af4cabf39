#!/usr/bin/python3
"""End-to-end test of the Python client, moe-client and deploy/launch-cluster.sh.

Starts a 2-rank cluster with deploy/launch-cluster.sh (the one-command launcher), talks to it with
clients/python/moe_client.py and the moe-client binary, checks the answers against the model's
samples.json (transformers' greedy continuations), then stops the launcher with SIGINT (what Ctrl-C
sends) and checks that it shut everything down cleanly with no process left behind.

Environment (CTest sets them): MOE_BUILD_DIR (the build folder), MOE_PYTHON_PROTO_DIR
(<build>/python), MOE_SOURCE_DIR (the checkout). Runs with /usr/bin/python3 (python3-grpcio).
"""

import json
import re
import os
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

from launched_cluster import (BUILD_DIR, CLIENT_BIN, COORDINATOR_BIN, MODEL_DIR, RANKS, SOURCE_DIR, STOP_TIMEOUT_S,  # noqa: E402
                              WORKER_BIN, LaunchedCluster, load_samples, pid_exists, read_ports_file,
                              wait_until_idle)
from sentencepiece_pieces import sentencepiece_pieces, sentencepiece_pieces_and_types  # noqa: E402

os.environ.setdefault("MOE_PYTHON_PROTO_DIR", os.path.join(BUILD_DIR, "python"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "clients", "python"))

import grpc  # noqa: E402

from moe_client import MoeClient  # noqa: E402


class PythonClientEndToEnd(unittest.TestCase):
    cluster = None
    samples = None

    @classmethod
    def setUpClass(cls):
        cls.samples = load_samples()
        cls.cluster = LaunchedCluster(["--coordinator-arg=--log-stats-interval-s=0.2"])
        cls.cluster.start_or_kill()
        cls.client = MoeClient(cls.cluster.address, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.cluster.kill_everything()

    def moe_client(self, *args):
        return subprocess.run([CLIENT_BIN, "--server", self.cluster.address, *args], capture_output=True, text=True,
                              timeout=60)

    def test_a_health_and_reflection(self):
        self.assertEqual(self.client.health(), "SERVING")
        services = self.client.list_services()
        self.assertIn("moe.v1.Inference", services)
        self.assertIn("grpc.health.v1.Health", services)
        info = self.client.cluster_info()
        self.assertEqual(info.world_size, RANKS)
        self.assertTrue(all(r.loaded and r.alive for r in info.ranks))
        self.assertEqual(self.client.model_info().vocab_size, 2048)

    def test_b_generate_text_equals_sample(self):
        s = self.samples["ROMEO:"]
        text = self.client.generate_text("ROMEO:", max_tokens=48, temperature=0)
        self.assertEqual("ROMEO:" + text, s["greedy_text"])

        chunks = list(self.client.generate(token_ids=s["prompt_ids"], max_tokens=48, temperature=0, logprobs=2))
        self.assertGreater(len(chunks), 1, "the completion should arrive as a stream")
        self.assertEqual([t for c in chunks for t in c.token_ids], s["greedy_ids"])
        self.assertEqual(chunks[-1].usage.completion_tokens, 48)
        lps = [lp for c in chunks for lp in c.logprobs]
        self.assertEqual(len(lps), 48)
        self.assertTrue(all(lp.top[0].token_id == lp.token_id for lp in lps), "greedy picks the most probable")

        full = self.client.generate_full("First Citizen:\n", max_tokens=48, temperature=0)
        self.assertEqual(full.token_ids, self.samples["First Citizen:\n"]["greedy_ids"])
        self.assertEqual(full.finish_reason, "length")
        self.assertEqual(full.prompt_tokens, 4)
        # The prompt's ids as the model reads them, and a salted request (its own prefix-cache chain)
        # answers the same.
        salted = self.client.generate_choices("First Citizen:\n", max_tokens=8, temperature=0, n=2,
                                              return_prompt_token_ids=True, cache_salt="tenant-a")
        for c in salted:
            self.assertEqual(c.prompt_token_ids, self.samples["First Citizen:\n"]["prompt_ids"])
            self.assertEqual(c.token_ids, self.samples["First Citizen:\n"]["greedy_ids"][:8])
        with self.assertRaises(grpc.RpcError) as e:
            self.client.generate_text("ROMEO:", max_tokens=2, cache_salt="s" * 257)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("cache_salt", e.exception.details())

    def test_c_score_tokenize(self):
        s = self.samples["KING RICHARD III:\nNow is the"]
        r = self.client.score(s["prompt"], s["greedy_ids"])
        self.assertEqual(list(r.continuation_token_ids), s["greedy_ids"])
        self.assertTrue(r.is_greedy)
        self.assertAlmostEqual(r.sum_logprob, sum(r.logprobs), places=3)
        rolling = self.client.score_rolling(s["prompt_ids"] + s["greedy_ids"])
        self.assertEqual(rolling.num_scored_tokens, len(s["prompt_ids"]) + 47)
        # The continuation's log-probabilities are the same whether scored as a continuation or rolling.
        for a, b in zip(r.logprobs, rolling.logprobs[len(s["prompt_ids"]) - 1:]):
            self.assertAlmostEqual(a, b, delta=1e-5)
        self.assertEqual(self.client.tokenize(s["prompt"]), s["prompt_ids"])
        self.assertEqual(self.client.detokenize(s["prompt_ids"]), s["prompt"])
        pieces = sentencepiece_pieces(os.path.join(MODEL_DIR, "tokenizer.model"))
        self.assertEqual(self.client.token_pieces(s["prompt_ids"]), [pieces[i] for i in s["prompt_ids"]])
        # The model's special tokens: its control and unknown pieces (types 3 and 2 in tokenizer.model).
        types = sentencepiece_pieces_and_types(os.path.join(MODEL_DIR, "tokenizer.model"))
        self.assertEqual(list(self.client.model_info().special_token_ids),
                         [i for i, (_, kind) in enumerate(types) if kind in (2, 3)])
        # skip_special_tokens False: control tokens written out as their pieces ("<s>", "</s>"); after "<s>"
        # the first word's "▁" is a space (Hugging Face's decode: only the text's first one is dropped).
        bos, eos = pieces.index("<s>"), pieces.index("</s>")
        self.assertTrue(pieces[s["prompt_ids"][0]].startswith("\u2581"))
        self.assertEqual(self.client.detokenize([bos] + s["prompt_ids"] + [eos], skip_special_tokens=False),
                         "<s> " + s["prompt"] + "</s>")
        self.assertEqual(self.client.detokenize([bos] + s["prompt_ids"] + [eos]), s["prompt"])
        self.assertEqual(self.client.generate_text("ROMEO:", max_tokens=2, logit_bias={bos: 100},
                                                   skip_special_tokens=False), "<s><s>")

    def test_d_errors_and_cancellation(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.client.generate_text("ROMEO:", top_p=1.5)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("top_p", e.exception.details())
        with self.assertRaises(grpc.RpcError) as e:
            self.client.generate_text("ROMEO:", repetition_penalty=0.0)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("sampling.repetition_penalty", e.exception.details())
        # The penalty keywords reach the server: min_tokens past the EOS-free length still ends at max_tokens.
        full = self.client.generate_full("ROMEO:", max_tokens=6, min_tokens=6, temperature=0, repetition_penalty=1.3,
                                         presence_penalty=0.5, frequency_penalty=0.5, min_p=0.1)
        self.assertEqual(len(full.token_ids), 6)
        self.assertEqual(full.finish_reason, "length")
        # n completions, in index order: greedy ones are all the greedy continuation.
        one = self.client.generate_full("ROMEO:", max_tokens=8, temperature=0)
        choices = self.client.generate_choices("ROMEO:", max_tokens=8, temperature=0, n=3)
        self.assertEqual([c.index for c in choices], [0, 1, 2])
        for c in choices:
            self.assertEqual((c.token_ids, c.text, c.finish_reason), (one.token_ids, one.text, one.finish_reason))
        with self.assertRaises(TypeError):
            self.client.generate_full("ROMEO:", n=2)
        # logit_bias: +100 makes a token the greedy pick at every step.
        self.assertEqual(self.client.generate_full("ROMEO:", max_tokens=3, temperature=0, logit_bias={7: 100}).token_ids,
                         [7, 7, 7])

        # Leaving the stream early cancels the request; its KV blocks come back.
        stream = self.client.generate("ROMEO:", max_tokens=3000, ignore_eos=True, temperature=0)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        wait_until_idle(self.client, 15, "KV blocks not freed after cancellation")

    def test_d2_accepted_requests_say_so_in_initial_metadata(self):
        """Generate's initial metadata "moe-request-id-bin" comes once the request is accepted, before
        any message (the OpenAI front starts its answer on it): the id the messages carry, whatever its
        bytes (a plain metadata value must be printable ASCII: "café" aborted the coordinator); a
        refused request ends without it."""
        from moe.v1 import inference_pb2
        from moe_client import make_prompt, make_sampling
        request = inference_pb2.GenerateRequest(prompt=make_prompt("ROMEO:"),
                                                sampling=make_sampling(max_tokens=2, temperature=0))
        call = self.client._inference.Generate(request, timeout=60)
        metadata = dict(call.initial_metadata())
        first = next(iter(call))
        self.assertEqual(metadata.get("moe-request-id-bin"), first.request_id.encode())
        self.assertTrue(first.request_id)
        for mine in ("mine-1", "café\n\x7f 日本"):
            request.request_id = mine
            call = self.client._inference.Generate(request, timeout=60)
            self.assertEqual(dict(call.initial_metadata()).get("moe-request-id-bin"), mine.encode())
            self.assertEqual([m.request_id for m in call][0], mine)
        self.assertEqual(self.client.health(), "SERVING")  # the coordinator is still up
        refused = self.client._inference.Generate(
            inference_pb2.GenerateRequest(prompt=make_prompt("ROMEO:"), sampling=make_sampling(top_p=1.5)), timeout=60)
        self.assertNotIn("moe-request-id-bin", dict(refused.initial_metadata() or ()))
        with self.assertRaises(grpc.RpcError) as e:
            list(refused)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_e_moe_client_binary(self):
        r = self.moe_client("health")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"), r.stderr)
        r = self.moe_client("list-services")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("moe.v1.Inference", r.stdout.split())

        s = self.samples["ROMEO:"]
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "48", "--temperature", "0", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        last = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(last["token_ids"], s["greedy_ids"])
        self.assertEqual("ROMEO:" + last["text"], s["greedy_text"])
        self.assertEqual(last["finish_reason"], "length")
        self.assertEqual(last["usage"], {"prompt_tokens": 2, "completion_tokens": 48, "cached_prompt_tokens": 0})
        self.assertTrue(r.stdout.startswith(last["text"]), "the text is streamed before the JSON line")

        r = self.moe_client("score", "--context", "ROMEO:", "--continuation-ids",
                            ",".join(map(str, s["greedy_ids"])), "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(json.loads(r.stdout.strip().splitlines()[-1])["is_greedy"])

        r = self.moe_client("stats")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(json.loads(r.stdout)["ranks"]), RANKS)

        # detokenize --json: the text and each id's vocabulary entry (tokenizer.model's own pieces).
        r = self.moe_client("detokenize", "--token-ids", ",".join(map(str, s["greedy_ids"])), "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        pieces = sentencepiece_pieces(os.path.join(MODEL_DIR, "tokenizer.model"))
        self.assertEqual(json.loads(r.stdout), {"text": s["greedy_text"][len("ROMEO:"):],
                                                "pieces": [pieces[i] for i in s["greedy_ids"]]})

        r = self.moe_client("detokenize", "--token-ids", "%d,%d" % (pieces.index("<s>"), pieces.index("</s>")),
                            "--keep-special-tokens")
        self.assertEqual((r.returncode, r.stdout), (0, "<s></s>\n"), r.stderr)

        r = self.moe_client("generate", "--prompt", "ROMEO:", "--top-p", "1.5")
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith("moe-client: INVALID_ARGUMENT: "), r.stderr)
        self.assertIn("top_p", r.stderr)
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--top-p", "high")
        self.assertEqual(r.returncode, 2, r.stderr)
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "2", "--min-tokens", "5")
        self.assertEqual(r.returncode, 1)
        self.assertIn("sampling.min_tokens", r.stderr)
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "5", "--min-tokens", "5",
                            "--temperature", "0", "--repetition-penalty", "1.3", "--presence-penalty", "0.2",
                            "--frequency-penalty", "0.2", "--min-p", "0.05", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(json.loads(r.stdout.strip().splitlines()[-1])["token_ids"]), 5)
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "4", "--temperature", "0.8",
                            "--seed", "3", "--n", "2", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual([c["index"] for c in out["choices"]], [0, 1])
        self.assertTrue(all(len(c["token_ids"]) == 4 or c["finish_reason"] == "stop" for c in out["choices"]))
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "3", "--temperature", "0",
                            "--logit-bias", "9:100,5:-100", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout.strip().splitlines()[-1])["token_ids"], [9, 9, 9])
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "100", "--temperature", "0",
                            "--json-object", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(out["finish_reason"], "stop", out)
        self.assertIsInstance(json.loads(out["text"]), dict, out["text"])
        schema = '{"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3}'
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "200", "--temperature", "0",
                            "--json-schema", schema, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        value = json.loads(out["text"])
        self.assertTrue(isinstance(value, list) and len(value) >= 2 and all(type(v) is int for v in value), out["text"])
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--json-schema", '{"type": "string", "format": "hostname"}')
        self.assertEqual(r.returncode, 1)
        self.assertIn('format: "hostname" is not supported', r.stderr)
        regex = "[A-Z][a-z]{1,8}(, [a-z]{1,8}){1,3}!"
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "60", "--temperature", "0",
                            "--regex", regex, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertIsNotNone(re.fullmatch(regex, out["text"]), out["text"])
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "20", "--temperature", "0",
                            "--choice", "yes", "--choice", "no way", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(json.loads(r.stdout.strip().splitlines()[-1])["text"], ("yes", "no way"))
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "200", "--temperature", "0",
                            "--json-schema", '{"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, '
                            '"minItems": 2, "maxItems": 5}',
                            "--compact-json", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        text = json.loads(r.stdout.strip().splitlines()[-1])["text"]
        self.assertEqual(text, json.dumps(json.loads(text), separators=(",", ":")), "no whitespace between tokens")
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--regex", "a(?=b)")
        self.assertEqual(r.returncode, 1)
        self.assertIn("sampling.response_format.regex", r.stderr)
        grammar = 'root ::= name ", " name "!"\nname ::= [A-Z] [a-z]{1,8}'
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--max-tokens", "60", "--temperature", "0",
                            "--grammar", grammar, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertIsNotNone(re.fullmatch("[A-Z][a-z]{1,8}, [A-Z][a-z]{1,8}!", out["text"]), out["text"])
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--grammar", "root ::= root \"a\"")
        self.assertEqual(r.returncode, 1)
        self.assertIn("sampling.response_format.grammar", r.stderr)
        self.assertIn("left-recursive", r.stderr)
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--logit-bias", "9=100")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--logit-bias", r.stderr)
        r = self.moe_client("generate", "--prompt", "ROMEO:", "--n", "0")
        self.assertEqual(r.returncode, 1)
        self.assertIn("sampling.n", r.stderr)

    def test_f_the_coordinator_logs_stats_while_it_serves(self):
        """--log-stats-interval-s: while a generation runs, stats lines (vLLM's wording) show it
        running with tokens flowing; once it is done, one line of zeros, then quiet."""
        stats = re.compile(r"moe-coordinator: avg prompt throughput ([0-9.]+) tokens/s, avg generation throughput "
                           r"([0-9.]+) tokens/s, running (\d+) reqs, waiting (\d+) reqs, KV cache usage ([0-9.]+)%")

        def lines():
            return [m.groups() for m in stats.finditer(self.cluster.log_text())]

        wait_until_idle(self.client, 30, "the earlier tests' requests")
        time.sleep(0.6)  # past the line of zeros that follows them
        before = len(lines())
        # Long enough to span several 0.2 s lines (400 tokens took one line's time on a quiet machine).
        chunks = list(self.client.generate(token_ids=self.samples["ROMEO:"]["prompt_ids"], max_tokens=2000,
                                           temperature=0, ignore_eos=True))
        self.assertEqual(sum(len(c.token_ids) for c in chunks), 2000)
        time.sleep(0.6)
        during = lines()[before:]
        self.assertTrue(any(float(g) > 0 and int(r) == 1 for _, g, r, _, _ in during), during)
        self.assertEqual(during[-1][1:4], ("0.0", "0", "0"), during)
        settled = len(lines())
        time.sleep(0.6)
        self.assertEqual(len(lines()), settled, "no line while idle")

    def test_g_only_ranks_with_the_launchs_cluster_token_may_register(self):
        """The launcher gives the coordinator and its ranks a secret of its own (MOE_CLUSTER_TOKEN):
        a moe-worker started by anyone else on the network, without it or with another, is refused
        (UNAUTHENTICATED, exit 1, saying which), and the cluster serves on."""
        env = {k: v for k, v in os.environ.items() if k != "MOE_CLUSTER_TOKEN"}
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        for token, says in ((None, "no cluster token"), ("guess", "wrong cluster token")):
            run_env = dict(env, MOE_CLUSTER_TOKEN=token) if token else env
            r = subprocess.run([WORKER_BIN, "--coordinator", f"127.0.0.1:{self.cluster.cluster_port}"],
                               capture_output=True, text=True, timeout=60, env=run_env)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(says, r.stderr)
        self.assertEqual(self.client.health(), "SERVING")
        text = self.client.generate_text("ROMEO:", max_tokens=8, temperature=0)
        self.assertTrue(self.samples["ROMEO:"]["greedy_text"].startswith("ROMEO:" + text))

    def test_g2_a_rank_refused_at_registration_takes_its_job_down(self):
        """One rank of a job with another token (a host set up apart): its Register is refused, and
        the ranks whose Register waits for it (the coordinator answers once all have registered)
        give up with it, the job ending with exit 1 instead of waiting for ever."""
        tmp = os.path.join("/tmp", f"moe_g2_{os.getpid()}")
        os.makedirs(tmp, exist_ok=True)
        ports_file = os.path.join(tmp, "ports.json")
        env = {k: v for k, v in os.environ.items() if k != "MOE_CLUSTER_TOKEN"}
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OPENBLAS_NUM_THREADS="1")
        good = "good-token-0123456789abcdef"
        coordinator = subprocess.Popen(
            [COORDINATOR_BIN, "--model", MODEL_DIR, "--world-size", "2",
             "--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0", "--metrics-listen", "none",
             "--ports-file", ports_file],
            env=dict(env, MOE_CLUSTER_TOKEN=good), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            cluster = f"127.0.0.1:{read_ports_file(ports_file)['cluster']}"
            t0 = time.monotonic()
            r = subprocess.run(["mpirun", "--oversubscribe", "-np", "1", "-x", f"MOE_CLUSTER_TOKEN={good}", WORKER_BIN,
                                "--coordinator", cluster, ":", "-np", "1", "-x", "MOE_CLUSTER_TOKEN=other-token-0123456789",
                                WORKER_BIN, "--coordinator", cluster],
                               capture_output=True, text=True, timeout=90, env=env)
            self.assertNotEqual(r.returncode, 0, r.stderr)
            self.assertIn("wrong cluster token", r.stderr)
            self.assertIn("other rank(s) of the job could not register", r.stderr)
            self.assertLess(time.monotonic() - t0, 60)
        finally:
            coordinator.kill()
            coordinator.wait()
            for f in os.listdir(tmp):
                os.remove(os.path.join(tmp, f))
            os.rmdir(tmp)

    def test_z_sigint_shuts_down_cleanly(self):
        c = self.cluster
        t0 = time.monotonic()
        c.proc.send_signal(signal.SIGINT)
        try:
            status = c.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.fail("the launcher did not exit after SIGINT\n" + c.log_text())
        stopped = c.wait_for(r"stopped \(coordinator status (\S+), mpirun status (\S+)\)", 5)
        print(f"[ info ] launcher stopped in {time.monotonic() - t0:.2f} s", file=sys.stderr)
        self.assertEqual(stopped.groups(), ("0", "0"), c.log_text())
        self.assertEqual(status, 0, c.log_text())
        self.assertFalse(pid_exists(c.coordinator_pid))
        self.assertFalse(pid_exists(c.mpirun_pid))
        self.assertEqual(c.leftovers(), [], "processes left behind")
        with self.assertRaises(grpc.RpcError):
            self.client.health(timeout=2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
