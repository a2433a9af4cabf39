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


if __name__ == "__main__":
    unittest.main()
