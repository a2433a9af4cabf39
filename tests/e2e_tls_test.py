#!/usr/bin/python3
"""The coordinator's public API over TLS (moe-coordinator --tls-cert-file / --tls-key-file, through
deploy/launch-cluster.sh), end to end.

A self-signed certificate for 127.0.0.1 is made with the openssl command. The cluster serves the
Python client that trusts it (the greedy text of the model's samples.json), moe-client with
MOE_TLS_CA_FILE, and the OpenAI front the launcher starts (it trusts the certificate through the
launcher's MOE_TLS_CA_FILE), the workers register and serve over TLS too (--cluster-tls: the
cluster port answers nothing in plaintext; with --cluster-tls-client-ca-file it also asks each
worker for a certificate, mutual TLS), and the front itself serves HTTPS only with the same files (moe-openai-server
--ssl-certfile / --ssl-keyfile), whole and streamed answers over several connections. A plaintext
client, or one that trusts another certificate, gets nothing, from either. A coordinator or an OpenAI
front given a key that is not its certificate's, or files that hold no PEM, stops at once naming
the flag.

Environment (CTest sets them): MOE_BUILD_DIR, MOE_PYTHON_PROTO_DIR, MOE_SOURCE_DIR.
"""

import http.client
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

from launched_cluster import (BUILD_DIR, CLIENT_BIN, COORDINATOR_BIN, MODEL_DIR, SOURCE_DIR, WORKER_BIN,  # noqa: E402
                              LaunchedCluster, load_samples, read_ports_file)

os.environ.setdefault("MOE_PYTHON_PROTO_DIR", os.path.join(BUILD_DIR, "python"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "clients", "python"))

import grpc  # noqa: E402

from moe_client import MoeClient  # noqa: E402

OPENAI_BIN = os.path.join(BUILD_DIR, "coordinator", "openai", "moe-openai-server")


def self_signed(folder, name):
    """A certificate for 127.0.0.1 and localhost and its key: (cert path, key path)."""
    cert, key = os.path.join(folder, name + ".pem"), os.path.join(folder, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=" + name,
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


class TlsEndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.samples = load_samples()
        cls.dir = tempfile.TemporaryDirectory()
        cls.cert, cls.key = self_signed(cls.dir.name, "coordinator")
        cls.other_cert, cls.other_key = self_signed(cls.dir.name, "other")
        # The launcher then trusts the certificate itself; a caller's own TLS settings would change that
        # (LaunchedCluster starts from this process's environment).
        for k in [k for k in os.environ if k.startswith("MOE_TLS_")]:
            del os.environ[k]
        cls.cluster = LaunchedCluster(["--tls-cert-file", cls.cert, "--tls-key-file", cls.key, "--cluster-tls",
                                       "--openai-listen", "127.0.0.1:0"])
        cls.cluster.start_or_kill()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.kill_everything()
        cls.dir.cleanup()

    def test_a_a_client_that_trusts_the_certificate_is_served(self):
        with MoeClient(self.cluster.address, timeout=60, tls_ca_file=self.cert) as c:
            self.assertEqual(c.health(), "SERVING")
            s = self.samples["ROMEO:"]
            text = c.generate_text("ROMEO:", max_tokens=len(s["greedy_ids"]), temperature=0)
            self.assertEqual("ROMEO:" + text, s["greedy_text"])
        r = subprocess.run([CLIENT_BIN, "--server", self.cluster.address, "--timeout", "10", "health"],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ, MOE_TLS_CA_FILE=self.cert))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("SERVING", r.stdout)

    def test_b_plaintext_and_other_certificates_get_nothing(self):
        for how, kwargs in (("plaintext", {}), ("another certificate", {"tls_ca_file": self.other_cert})):
            with MoeClient(self.cluster.address, timeout=5, **kwargs) as c:
                with self.assertRaises(grpc.RpcError, msg=how) as e:
                    c.generate_text("ROMEO:", max_tokens=2, temperature=0)
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE, how)
        env = dict(os.environ)  # no MOE_TLS_CA_FILE (setUpClass): plaintext
        r = subprocess.run([CLIENT_BIN, "--server", self.cluster.address, "--timeout", "3", "health"],
                           capture_output=True, text=True, timeout=60, env=env)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        # A CA file that is not a certificate: moe-client says which variable and file.
        r = subprocess.run([CLIENT_BIN, "--server", self.cluster.address, "health"], capture_output=True, text=True,
                           timeout=60, env=dict(env, MOE_TLS_CA_FILE=self.key))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("MOE_TLS_CA_FILE", r.stderr)
        self.assertIn("no PEM certificate", r.stderr)

    def test_c_the_openai_front_serves_https_and_reaches_the_coordinator_over_tls(self):
        s = self.samples["ROMEO:"]
        body = json.dumps({"prompt": "ROMEO:", "max_tokens": len(s["greedy_ids"]), "temperature": 0}).encode()

        def complete(scheme, context):
            req = urllib.request.Request(f"{scheme}://{self.cluster.openai_address}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60, context=context) as resp:
                return json.load(resp)

        # The launcher gave the front the coordinator's certificate and key: HTTPS only.
        trusted = ssl.create_default_context(cafile=self.cert)
        for _ in range(2):  # a second connection too: the first handshake is where it used to die
            self.assertEqual("ROMEO:" + complete("https", trusted)["choices"][0]["text"], s["greedy_text"])
        req = urllib.request.Request(
            f"https://{self.cluster.openai_address}/v1/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"prompt": "ROMEO:", "max_tokens": len(s["greedy_ids"]), "temperature": 0,
                             "stream": True}).encode())
        with urllib.request.urlopen(req, timeout=60, context=trusted) as resp:
            events = [line.decode().strip() for line in resp if line.startswith(b"data: ")]
        self.assertEqual(events[-1], "data: [DONE]")
        chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
        self.assertEqual("ROMEO:" + "".join(c["choices"][0]["text"] for c in chunks), s["greedy_text"])
        # A client that trusts another certificate, or speaks plain HTTP, gets no answer.
        with self.assertRaises(urllib.error.URLError) as refused:
            complete("https", ssl.create_default_context(cafile=self.other_cert))
        self.assertIsInstance(refused.exception.reason, ssl.SSLCertVerificationError)
        with self.assertRaises((ConnectionError, http.client.HTTPException, urllib.error.URLError)):
            complete("http", None)
        # The front still serves after those.
        self.assertEqual("ROMEO:" + complete("https", trusted)["choices"][0]["text"], s["greedy_text"])

    def test_c2_the_cluster_port_speaks_tls_only(self):
        """--cluster-tls: the workers registered over TLS (the cluster serves, test a); the cluster
        port answers a client that trusts the certificate and nothing in plaintext."""
        cluster = f"127.0.0.1:{self.cluster.cluster_port}"
        with MoeClient(cluster, timeout=10, tls_ca_file=self.cert) as c:
            self.assertEqual(c.health(), "SERVING")
        for kwargs in ({}, {"tls_ca_file": self.other_cert}):
            with MoeClient(cluster, timeout=5, **kwargs) as c:
                with self.assertRaises(grpc.RpcError) as e:
                    c.health()
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE, kwargs)
        # A worker given a file that is no certificate stops at once naming its flag.
        r = subprocess.run([WORKER_BIN, "--coordinator", cluster, "--coordinator-tls-ca-file", self.key],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--coordinator-tls-ca-file: %s holds no PEM certificate" % self.key, r.stderr)

    def test_c3_mutual_tls_on_the_cluster_port(self):
        """--cluster-tls-client-ca-file: the cluster port serves only clients showing a certificate
        those roots vouch for. A worker showing one (--cluster-tls-cert-file / --cluster-tls-key-file)
        registers and the coordinator serves; a client with none, or with another, gets nothing."""
        worker_cert, worker_key = self_signed(self.dir.name, "worker")
        coordinator = subprocess.Popen(
            [COORDINATOR_BIN, "--model", MODEL_DIR, "--world-size", "1", "--listen", "127.0.0.1:0",
             "--cluster-listen", "127.0.0.1:0", "--metrics-listen", "none", "--ports-file",
             os.path.join(self.dir.name, "mtls-ports.json"), "--cluster-tls-cert-file", self.cert,
             "--cluster-tls-key-file", self.key, "--cluster-tls-client-ca-file", worker_cert],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        worker, worker_log = None, tempfile.TemporaryFile(mode="w+")
        try:
            ports = read_ports_file(os.path.join(self.dir.name, "mtls-ports.json"))
            cluster = f"127.0.0.1:{ports['cluster']}"
            worker = subprocess.Popen([WORKER_BIN, "--coordinator", cluster, "--coordinator-tls-ca-file", self.cert,
                                       "--cluster-tls-cert-file", worker_cert, "--cluster-tls-key-file", worker_key],
                                      stdout=subprocess.DEVNULL, stderr=worker_log, text=True)
            with MoeClient(f"127.0.0.1:{ports['public']}", timeout=60) as c:
                deadline = time.monotonic() + 60
                while c.health() != "SERVING":  # the worker registers over mutual TLS and loads
                    if worker.poll() is not None:
                        worker_log.seek(0)
                        self.fail("the worker ended: " + worker_log.read())
                    self.assertLess(time.monotonic(), deadline, "the worker did not register")
                    time.sleep(0.2)
                s = self.samples["ROMEO:"]
                text = c.generate_text("ROMEO:", max_tokens=len(s["greedy_ids"]), temperature=0)
                self.assertEqual("ROMEO:" + text, s["greedy_text"])

            def read(path):
                if path is None:
                    return None
                with open(path, "rb") as f:
                    return f.read()

            def health(client_cert=None, client_key=None):
                creds = grpc.ssl_channel_credentials(root_certificates=read(self.cert), private_key=read(client_key),
                                                     certificate_chain=read(client_cert))
                with grpc.secure_channel(cluster, creds) as channel:
                    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                                request_serializer=lambda _: b"", response_deserializer=lambda b: b)
                    return check(None, timeout=5)

            self.assertEqual(health(worker_cert, worker_key), b"\x08\x01")  # SERVING
            for shown in ((None, None), (self.other_cert, self.other_key)):
                with self.assertRaises(grpc.RpcError, msg=str(shown)) as e:
                    health(*shown)
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE, shown)
            # A worker showing no certificate is not let in: it ends once its 30 s of reconnecting are
            # over (it waits that long for a coordinator still starting), naming what it may lack.
            # (One with a certificate the roots do not vouch for fails the same handshake, above.)
            r = subprocess.run([WORKER_BIN, "--coordinator", cluster, "--coordinator-tls-ca-file", self.cert],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("--cluster-tls-cert-file", r.stderr)
        finally:
            for p in (worker, coordinator):
                if p is not None:
                    p.kill()
                    p.wait(timeout=30)
            coordinator.stderr.close()
            worker_log.close()

    def test_d_a_coordinator_with_a_wrong_key_or_no_pem_stops_naming_the_flag(self):
        base = [COORDINATOR_BIN, "--model", MODEL_DIR, "--world-size", "1", "--listen", "127.0.0.1:0",
                "--cluster-listen", "127.0.0.1:0", "--metrics-listen", "none"]
        for args, says in (
                (["--tls-cert-file", self.cert, "--tls-key-file", self.other_key], "--tls-key-file is not the key"),
                (["--tls-cert-file", self.key, "--tls-key-file", self.key], "--tls-cert-file"),
                (["--tls-cert-file", self.cert, "--tls-key-file", self.cert], "--tls-key-file"),
                (["--tls-cert-file", self.cert, "--tls-key-file", "/nonexistent.key"], "--tls-key-file"),
                (["--tls-cert-file", self.cert], "--tls-key-file: required"),
                (["--cluster-tls-cert-file", self.cert, "--cluster-tls-key-file", self.other_key],
                 "--cluster-tls-key-file is not the key"),
                (["--cluster-tls-cert-file", self.key, "--cluster-tls-key-file", self.key], "--cluster-tls-cert-file"),
                (["--cluster-tls-cert-file", self.cert], "--cluster-tls-key-file: required"),
                (["--cluster-tls-cert-file", self.cert, "--cluster-tls-key-file", self.key,
                  "--cluster-tls-client-ca-file", self.key], "--cluster-tls-client-ca-file: %s holds no PEM" % self.key),
                (["--cluster-tls-client-ca-file", self.cert], "--cluster-tls-client-ca-file: needs the cluster port's TLS")):
            r = subprocess.run(base + args, capture_output=True, text=True, timeout=60)
            self.assertNotEqual(r.returncode, 0, args)
            self.assertIn(says, r.stderr, args)

    def test_e0_client_certificates_when_asked_for(self):
        """--ssl-ca-certs / --ssl-cert-reqs (vLLM's): 2 serves only clients with a certificate those
        roots vouch for (mutual TLS); 1 asks for one and verifies it when given."""
        client_cert, client_key = self_signed(self.dir.name, "client")
        trusted = ssl.create_default_context(cafile=self.cert)
        with_cert = ssl.create_default_context(cafile=self.cert)
        with_cert.load_cert_chain(client_cert, client_key)
        with_other = ssl.create_default_context(cafile=self.cert)
        with_other.load_cert_chain(self.other_cert, self.other_key)
        refused = (urllib.error.URLError, ssl.SSLError, ConnectionError, http.client.HTTPException)
        for reqs, served, turned_away in (("2", (with_cert,), (trusted, with_other)),
                                          ("1", (with_cert, trusted), (with_other,))):
            front = subprocess.Popen(
                [OPENAI_BIN, "--coordinator", self.cluster.address, "--listen", "127.0.0.1:0", "--ssl-certfile",
                 self.cert, "--ssl-keyfile", self.key, "--ssl-ca-certs", client_cert, "--ssl-cert-reqs", reqs],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=dict(os.environ, MOE_TLS_CA_FILE=self.cert))
            try:
                line = front.stdout.readline()
                self.assertIn("listening on port", line, front.stderr.read() if not line else line)
                port = int(line.split("listening on port")[1].split(",")[0])
                for context in served:
                    with urllib.request.urlopen(f"https://127.0.0.1:{port}/v1/models", timeout=30,
                                                context=context) as resp:
                        self.assertEqual(resp.status, 200)
                for context in turned_away:
                    with self.assertRaises(refused, msg=f"--ssl-cert-reqs {reqs}"):
                        with urllib.request.urlopen(f"https://127.0.0.1:{port}/v1/models", timeout=30,
                                                    context=context) as resp:
                            resp.read()
            finally:
                front.terminate()
                front.wait(timeout=30)
                front.stdout.close()
                front.stderr.close()

    def test_e_an_openai_front_with_unusable_tls_files_stops_naming_the_flag(self):
        # The files are checked before the front dials its coordinator (none answers at this address).
        base = [OPENAI_BIN, "--coordinator", "127.0.0.1:1", "--listen", "127.0.0.1:0"]
        for args, status, says in (
                (["--ssl-certfile", self.cert, "--ssl-keyfile", self.other_key], 1,
                 "--ssl-keyfile: %s is not the key of --ssl-certfile's certificate" % self.other_key),
                (["--ssl-certfile", self.key, "--ssl-keyfile", self.key], 1, "--ssl-certfile: %s holds no PEM" % self.key),
                (["--ssl-certfile", self.cert, "--ssl-keyfile", self.cert], 1,
                 "--ssl-keyfile: %s holds no unencrypted PEM private key" % self.cert),
                (["--ssl-certfile", "/nonexistent.pem", "--ssl-keyfile", self.key], 1,
                 "--ssl-certfile: /nonexistent.pem does not exist"),
                (["--ssl-certfile", self.cert, "--ssl-keyfile", "/tmp"], 1, "--ssl-keyfile: /tmp is a directory"),
                (["--ssl-certfile", self.cert], 2, "--ssl-keyfile: required with --ssl-certfile"),
                (["--ssl-certfile", self.cert, "--ssl-keyfile", self.key, "--ssl-ca-certs", self.key], 1,
                 "--ssl-ca-certs: %s holds no PEM certificate" % self.key),
                (["--ssl-certfile", self.cert, "--ssl-keyfile", self.key, "--ssl-cert-reqs", "2"], 2,
                 "--ssl-cert-reqs: clients' certificates need --ssl-ca-certs"),
                (["--ssl-certfile", self.cert, "--ssl-keyfile", self.key, "--ssl-ca-certs", self.cert,
                  "--ssl-cert-reqs", "3"], 2, "--ssl-cert-reqs: expected 0 (none), 1 (optional) or 2 (required)"),
                (["--ssl-ca-certs", self.cert], 2, "--ssl-ca-certs: needs --ssl-certfile and --ssl-keyfile")):
            r = subprocess.run(base + args, capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, status, (args, r.stderr))
            self.assertIn(says, r.stderr, args)


if __name__ == "__main__":
    unittest.main(verbosity=2)
