#!/usr/bin/python3
"""End-to-end test of deploy/launch-cluster.sh --restart-workers: a 2-rank cluster loses a rank,
first killed (SIGKILL: mpirun ends), then hung (SIGSTOP: mpirun keeps running while the coordinator
has lost its heartbeats). Each time the launcher notices, kills what is left of the job, starts a
new one and serves again, with transformers' greedy tokens (samples.json); a stream in flight at
the first loss is held (the launcher's default --resume-timeout-s) and ends normally on the new
job, all its tokens streamed once. With no restart left a third loss stops everything: exit 1, the
coordinator stopped cleanly, no process left behind. A restarted job that dies while it starts uses
up a restart, and the next one serves.

Environment (CTest sets them): MOE_BUILD_DIR, MOE_PYTHON_PROTO_DIR, MOE_SOURCE_DIR.
Runs with /usr/bin/python3 (python3-grpcio).
"""

import os
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

from launched_cluster import (BUILD_DIR, SOURCE_DIR, START_TIMEOUT_S, LaunchedCluster,  # noqa: E402
                              load_samples, mpi_rank_of, process_alive, session_members, worker_pid)

os.environ.setdefault("MOE_PYTHON_PROTO_DIR", os.path.join(BUILD_DIR, "python"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "clients", "python"))

from moe_client import MoeClient  # noqa: E402

HUNG_TIMEOUT_S = 4
HEARTBEAT_TIMEOUT_S = 2
LONG_TOKENS = 1500


class LauncherRestartsLostWorkers(unittest.TestCase):
    def test_killed_then_hung_rank_restart_the_job_until_no_restart_is_left(self):
        sample = load_samples()["ROMEO:"]
        c = LaunchedCluster(["--restart-workers", "2", "--hung-timeout", str(HUNG_TIMEOUT_S),
                             f"--coordinator-arg=--heartbeat-timeout-s={HEARTBEAT_TIMEOUT_S}"])
        try:
            c.start()
            client = MoeClient(c.address, timeout=60)

            def serves_the_sample():
                full = client.generate_full(token_ids=sample["prompt_ids"], max_tokens=16, temperature=0)
                self.assertEqual(full.token_ids, sample["greedy_ids"][:16], c.log_text())

            def rank1():
                pid = worker_pid(c.cluster_port, 1)
                self.assertIsNotNone(pid, "no moe-worker process of rank 1\n" + c.log_text())
                return pid

            def restarted(k):
                c.wait_for(rf"restarting the worker job \({k} of 2\)", 30)
                c.mpirun_pid = int(c.wait_for(r"mpirun pid (\d+)", 10).group(1))
                c.wait_for(r"serving on ", START_TIMEOUT_S)

            serves_the_sample()

            # A rank dies while a long stream runs: mpirun ends, the launcher starts a new job, and
            # the stream goes on there.
            streamed, outcome = [], {}

            def long_stream():
                try:
                    with MoeClient(c.address, timeout=START_TIMEOUT_S + 120) as own:
                        for chunk in own.generate(token_ids=sample["prompt_ids"], max_tokens=LONG_TOKENS,
                                                  temperature=0, ignore_eos=True):
                            streamed.extend(chunk.token_ids)
                            if chunk.finish_reason:
                                outcome["finish_reason"] = chunk.finish_reason
                                outcome["completion_tokens"] = chunk.usage.completion_tokens
                except Exception as e:  # noqa: BLE001 (reported below)
                    outcome["error"] = e

            reader = threading.Thread(target=long_stream)
            reader.start()
            deadline = time.monotonic() + 30
            while len(streamed) < 8 and time.monotonic() < deadline and reader.is_alive():
                time.sleep(0.01)
            self.assertGreaterEqual(len(streamed), 8, f"{outcome}\n{c.log_text()}")
            os.kill(rank1(), signal.SIGKILL)
            c.wait_for(r"mpirun exited unexpectedly", 30)
            restarted(1)
            reader.join(timeout=START_TIMEOUT_S + 120)
            self.assertFalse(reader.is_alive(), "the held stream never ended")
            self.assertNotIn("error", outcome, c.log_text())
            self.assertEqual(len(streamed), LONG_TOKENS)
            self.assertEqual(outcome.get("completion_tokens"), LONG_TOKENS)
            self.assertEqual(streamed[:16], sample["greedy_ids"][:16])
            serves_the_sample()

            # A rank hangs: mpirun keeps running, the coordinator stops serving; the launcher kills
            # the job after --hung-timeout and starts another.
            hung = rank1()
            os.kill(hung, signal.SIGSTOP)
            c.wait_for(rf"have not served for {HUNG_TIMEOUT_S}s while mpirun runs: killing the job", 60)
            restarted(2)
            self.assertFalse(process_alive(hung), "the hung rank was left running")
            serves_the_sample()

            # No restart left: the launcher stops everything and exits 1.
            os.kill(rank1(), signal.SIGKILL)
            c.wait_for(r"mpirun exited unexpectedly", 30)
            stopped = c.wait_for(r"stopped \(coordinator status (\S+), mpirun status (\S+)\)", 60)
            self.assertEqual(stopped.group(1), "0", c.log_text())
            self.assertEqual(c.proc.wait(timeout=30), 1)
            self.assertEqual(c.leftovers(), [], "processes left behind")
            client.close()
        finally:
            c.kill_everything()

    def test_a_restarted_job_that_dies_while_starting_uses_a_restart_and_the_next_one_serves(self):
        """A rank of the restarted job dies while it loads: that restart is used up, but the launcher
        does not give up with restarts left (it stopped everything and exited 1): it starts the next
        job, which serves; SIGTERM then stops everything cleanly."""
        sample = load_samples()["ROMEO:"]
        c = LaunchedCluster(["--restart-workers", "2", f"--coordinator-arg=--heartbeat-timeout-s={HEARTBEAT_TIMEOUT_S}"])
        try:
            c.start()
            client = MoeClient(c.address, timeout=60)
            pid = worker_pid(c.cluster_port, 1)
            self.assertIsNotNone(pid, "no moe-worker process of rank 1\n" + c.log_text())
            os.kill(pid, signal.SIGKILL)
            c.wait_for(r"mpirun exited unexpectedly", 30)
            c.wait_for(r"restarting the worker job \(1 of 2\)", 30)
            c.mpirun_pid = int(c.wait_for(r"mpirun pid (\d+)", 10).group(1))
            # The new job's rank 1, killed as soon as it runs (long before the job has loaded).
            deadline = time.monotonic() + 30
            victim = None
            while victim is None and time.monotonic() < deadline:
                victim = next((p for p in session_members(c.mpirun_pid) if mpi_rank_of(p) == 1), None)
                if victim is None:
                    time.sleep(0.002)
            self.assertIsNotNone(victim, "the restarted job's rank 1 never ran\n" + c.log_text())
            os.kill(victim, signal.SIGKILL)
            c.wait_for(r"mpirun exited while starting", 60)
            c.wait_for(r"restarting the worker job \(2 of 2\)", 30)
            c.mpirun_pid = int(c.wait_for(r"mpirun pid (\d+)", 10).group(1))
            c.wait_for(r"serving on ", START_TIMEOUT_S)
            full = client.generate_full(token_ids=sample["prompt_ids"], max_tokens=16, temperature=0)
            self.assertEqual(full.token_ids, sample["greedy_ids"][:16], c.log_text())
            client.close()
            c.proc.send_signal(signal.SIGTERM)
            stopped = c.wait_for(r"stopped \(coordinator status (\S+), mpirun status (\S+)\)", 60)
            self.assertEqual(stopped.groups(), ("0", "0"), c.log_text())
            self.assertEqual(c.proc.wait(timeout=30), 0)
            self.assertEqual(c.leftovers(), [], "processes left behind")
        finally:
            c.kill_everything()


if __name__ == "__main__":
    unittest.main(verbosity=2)
