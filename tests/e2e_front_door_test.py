#!/usr/bin/python3
"""The public API (moe.v1.Inference) against heavy or careless clients, on a 2-rank cluster started
with deploy/launch-cluster.sh.

- Requests that wait (queued, or on ranks that say nothing) cost the coordinator nothing while they
  wait: one thread watches every call for cancellation, where each handler used to poll on a 20 ms
  timer of its own (a full queue, 1,536 requests, took both cores of a 2-core host from the worker
  ranks beside it; the cluster all but stopped). Counted in the coordinator's context switches, a
  measure that does not depend on the machine's speed: a timer per request gives ~50 a request a
  second, the watcher well under 1. They still end when cancelled, and the rest complete.
- A Score item whose text could not fit the context whatever it encodes to is refused before it is
  encoded (INVALID_ARGUMENT naming the item), as a Generate prompt is.
- ScoreRolling texts are refused at the first whose windows overflow the queue, before the rest are
  encoded; Tokenize and Detokenize answers past the 256 MiB message limit are refused before they
  are built (RESOURCE_EXHAUSTED naming return_offsets / return_pieces), not by gRPC once built.

Environment (CTest sets them): MOE_BUILD_DIR, MOE_PYTHON_PROTO_DIR, MOE_SOURCE_DIR.
"""

import glob
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

from launched_cluster import BUILD_DIR, SOURCE_DIR, LaunchedCluster, wait_until_idle, worker_pid  # noqa: E402

os.environ.setdefault("MOE_PYTHON_PROTO_DIR", os.path.join(BUILD_DIR, "python"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "clients", "python"))

import grpc  # noqa: E402

from moe_client import MoeClient, inference_pb2 as pb, inference_pb2_grpc  # noqa: E402


def context_switches(pid):
    """Voluntary and involuntary context switches of every thread of `pid` so far."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(path) as f:
                for line in f:
                    if "ctxt_switches" in line:
                        total += int(line.split()[1])
        except OSError:  # the thread ended meanwhile
            pass
    return total


class FrontDoor(unittest.TestCase):
    cluster = None

    @classmethod
    def setUpClass(cls):
        # Ranks stopped (SIGSTOP) for a while must not be declared lost.
        cls.cluster = LaunchedCluster(["--coordinator-arg=--heartbeat-timeout-s=600",
                                       "--coordinator-arg=--log-stats-interval-s=0"])
        cls.cluster.start_or_kill()
        cls.client = MoeClient(cls.cluster.address, timeout=120)
        cls.channel = grpc.insecure_channel(cls.cluster.address)
        cls.stub = inference_pb2_grpc.InferenceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.client.close()
        cls.cluster.kill_everything()

    def workers(self):
        pids = [worker_pid(self.cluster.cluster_port, rank) for rank in range(2)]
        self.assertNotIn(None, pids)
        return pids

    def test_waiting_requests_cost_no_wakeups_and_still_end_when_cancelled(self):
        n = 300
        ranks = self.workers()
        for pid in ranks:
            os.kill(pid, signal.SIGSTOP)  # nothing comes back: every request waits
        try:
            request = pb.GenerateRequest(prompt=pb.Prompt(text="ROMEO:"),
                                         sampling=pb.SamplingParams(max_tokens=4, temperature=0))
            calls = [self.stub.Generate(request, timeout=300) for _ in range(n)]
            deadline = time.monotonic() + 60
            while True:
                st = self.client.stats()
                if st.requests_running + st.requests_waiting == n:
                    break
                self.assertLess(time.monotonic(), deadline, f"not all {n} requests were queued: {st}")
                time.sleep(0.05)
            before = context_switches(self.cluster.coordinator_pid)
            start = time.monotonic()
            time.sleep(2)
            switches = context_switches(self.cluster.coordinator_pid) - before
            per_request_second = switches / n / (time.monotonic() - start)
            # A timer per waiting request: ~50; one watcher for all: ~0.2 here.
            self.assertLess(per_request_second, 5, f"{switches} context switches of the coordinator in 2 s "
                                                   f"with {n} requests waiting")
            # A waiting call still ends when its client cancels it (its rank, stopped, frees the slot
            # once it runs again). The client's side of a cancelled call ends CANCELLED whatever the
            # server does, so the coordinator's count of finished requests says whether its handlers
            # woke: with the ranks still stopped nothing else can finish, and a handler that nothing
            # woke would end only once its rank ran again.
            finished_before = self.client.stats().requests_finished
            for c in calls[:10]:
                c.cancel()
            for c in calls[:10]:
                with self.assertRaises(grpc.RpcError) as e:
                    list(c)
                self.assertEqual(e.exception.code(), grpc.StatusCode.CANCELLED)
            deadline = time.monotonic() + 60
            while self.client.stats().requests_finished - finished_before < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(self.client.stats().requests_finished - finished_before, 10,
                             "the coordinator did not end the cancelled requests while their ranks were stopped")
        finally:
            for pid in ranks:
                os.kill(pid, signal.SIGCONT)
        texts = set()
        for c in calls[10:]:
            messages = list(c)
            self.assertEqual(messages[-1].finish_reason, pb.FINISH_REASON_LENGTH)
            texts.add("".join(m.text for m in messages))
        self.assertEqual(len(texts), 1)  # greedy: all the same
        wait_until_idle(self.client, 60, "after the waiting requests")

    def test_a_score_text_too_long_for_any_encoding_is_refused_before_it_is_encoded(self):
        # 64 MB: encoded, it took ~7 s and ~700 MB of the coordinator's memory to be refused.
        item = pb.ScoreItem(context=pb.Prompt(text="the king is dead " * (4 << 20)), continuation=pb.Prompt(text=" long"))
        channel = grpc.insecure_channel(self.cluster.address, options=[("grpc.max_send_message_length", 128 << 20)])
        try:
            with self.assertRaises(grpc.RpcError) as e:
                inference_pb2_grpc.InferenceStub(channel).Score(pb.ScoreRequest(items=[item]), timeout=120)
        finally:
            channel.close()
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("items[0] (context + continuation): at least", e.exception.details())

    def big_stub(self):
        """A stub whose requests and answers may be as big as the coordinator's (256 MiB) and more."""
        channel = grpc.insecure_channel(self.cluster.address, options=[("grpc.max_send_message_length", 512 << 20),
                                                                       ("grpc.max_receive_message_length", 512 << 20)])
        self.addCleanup(channel.close)
        return inference_pb2_grpc.InferenceStub(channel)

    def test_score_rolling_texts_are_refused_at_the_first_that_overflows_the_queue(self):
        # 20 MB (~5.5 M tokens, 1,348 windows of this model's 4,096) overflows the queue of 1,024
        # (--max-waiting) alone: refused there, before the next text is encoded (an empty text, an
        # error of its own, shows whether it was). All texts used to be encoded first.
        texts = [pb.Prompt(text=("the king is dead, long live the king! " * (560 << 10))), pb.Prompt(text="")]
        with self.assertRaises(grpc.RpcError) as e:
            self.big_stub().ScoreRolling(pb.ScoreRollingRequest(texts=texts), timeout=120)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("texts: at least ", e.exception.details())
        self.assertIn("(rolling windows of texts[0..0]) exceed the coordinator's queue of 1024 (--max-waiting)",
                      e.exception.details())

    def test_tokenize_offsets_past_the_message_limit_are_refused_naming_the_field(self):
        # One token a byte here (no piece merges "aa"): 22 M tokens' offsets take ~286 MB to send, past
        # the 256 MiB limit; gRPC used to refuse it only once built ("Sent message larger than max").
        stub = self.big_stub()
        text = "a" * (22 << 20)
        with self.assertRaises(grpc.RpcError) as e:
            stub.Tokenize(pb.TokenizeRequest(text=text, return_offsets=True), timeout=120)
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertTrue(e.exception.details().startswith("return_offsets: the "), e.exception.details())
        self.assertIn("more than the 268435456 (256 MiB) the coordinator sends in one message", e.exception.details())
        # The ids alone fit, and their offsets for a smaller text are as before.
        self.assertEqual(len(stub.Tokenize(pb.TokenizeRequest(text=text, add_bos=False), timeout=120).token_ids), 22 << 20)
        small = stub.Tokenize(pb.TokenizeRequest(text="a" * 5, add_bos=False, return_offsets=True), timeout=60)
        self.assertEqual([(o.start, o.end) for o in small.offsets], [(k, k + 1) for k in range(5)])

    def test_detokenize_pieces_past_the_message_limit_are_refused_naming_the_field(self):
        stub = self.big_stub()
        vocab = self.client.model_info().vocab_size
        pieces = stub.Detokenize(pb.DetokenizeRequest(token_ids=list(range(vocab)), return_pieces=True), timeout=60).pieces
        longest = max(range(vocab), key=lambda i: len(pieces[i].encode()))
        # Text and pieces of 9 M of the longest piece (~33 bytes an id) take ~300 MB, past the 256 MiB
        # limit; gRPC used to refuse it only once built, at ~2 GB of memory for 30 M ids.
        ids = [longest] * (9 << 20)
        with self.assertRaises(grpc.RpcError) as e:
            stub.Detokenize(pb.DetokenizeRequest(token_ids=ids, return_pieces=True), timeout=120)
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertTrue(e.exception.details().startswith("return_pieces: the text of the "), e.exception.details())
        # Without the pieces the text fits, and is what it was.
        text = stub.Detokenize(pb.DetokenizeRequest(token_ids=ids), timeout=120).text
        one, two = (len(stub.Detokenize(pb.DetokenizeRequest(token_ids=[longest] * k), timeout=60).text.encode()) for k in (1, 2))
        self.assertEqual(len(text.encode()), one + (len(ids) - 1) * (two - one))


if __name__ == "__main__":
    unittest.main()
