#!/usr/bin/python3
"""End-to-end test of benchmarks/serving/score_latency.sh: it starts a cluster of the default model
with deploy/launch-cluster.sh, times moe-client score-rolling at two lengths and writes one JSON whose
sums of logprobs are what moe-cli score (one process, no cluster) gives for the ids the JSON says it
drew; bad settings exit 2 naming them.

Environment (CTest sets them): MOE_BUILD_DIR, MOE_SOURCE_DIR. Runs with /usr/bin/python3.
"""

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

from launched_cluster import BUILD_DIR, SOURCE_DIR  # noqa: E402

SCRIPT = os.path.join(SOURCE_DIR, "benchmarks", "serving", "score_latency.sh")
CLI = os.path.join(BUILD_DIR, "worker", "moe-cli")


class ScoreLatencyScript(unittest.TestCase):
    def run_script(self, out, **env):
        return subprocess.run(["bash", SCRIPT, out, "--np", "1", "--build-dir", BUILD_DIR],
                              env=dict(os.environ, BUILD=BUILD_DIR, **env), capture_output=True, text=True,
                              timeout=240)

    def test_latencies_and_the_sums_of_the_ids_it_drew(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "score.json")
            r = self.run_script(out, LENGTHS="16 40", CALLS="2", WARMUP="1", SEED="9")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            result = json.load(open(out))
        self.assertEqual(sorted(result["lengths"]), ["16", "40"])
        vocab = result["vocab_size"]
        for n, entry in result["lengths"].items():
            self.assertEqual(len(entry["samples_ms"]), 2)
            self.assertGreater(entry["median_ms"], 0)
            rng = random.Random(result["seed"] + int(n))
            ids = [rng.randrange(min(3, vocab - 1), vocab) for _ in range(int(n))]
            cli = subprocess.run([CLI, "score", "--token-ids", ",".join(map(str, ids)), "--json"], capture_output=True,
                                 text=True, timeout=120)
            self.assertEqual(cli.returncode, 0, cli.stderr)
            want = sum(x for x in json.loads(cli.stdout.splitlines()[-1])["logprobs"] if x is not None)
            self.assertTrue(math.isfinite(entry["sum_logprob"]))
            self.assertAlmostEqual(entry["sum_logprob"], want, delta=1e-3 * len(ids))

    def test_bad_settings_exit_2_naming_them(self):
        r = self.run_script("/tmp/never.json", LENGTHS="16 many")
        self.assertEqual(r.returncode, 2)
        self.assertIn("LENGTHS", r.stderr)


if __name__ == "__main__":
    unittest.main()
