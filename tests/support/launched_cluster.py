"""deploy/launch-cluster.sh as a child process for the Python end-to-end tests, and the process
helpers they share (session members, processes by command line, MPI ranks).

Environment: MOE_BUILD_DIR (the build folder), MOE_SOURCE_DIR (the checkout); CTest sets them.
"""

import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time

SOURCE_DIR = os.environ.get("MOE_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.environ.get("MOE_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")

MODEL_DIR = os.path.join(SOURCE_DIR, "models", "shakespeare-moe")
LAUNCHER = os.path.join(SOURCE_DIR, "deploy", "launch-cluster.sh")
CLIENT_BIN = os.path.join(BUILD_DIR, "clients", "moe-client")
COORDINATOR_BIN = os.path.join(BUILD_DIR, "coordinator", "moe-coordinator")
WORKER_BIN = os.path.join(BUILD_DIR, "worker", "moe-worker")
RANKS = 2
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60


def wait_until_idle(client, timeout, what):
    """Polls the cluster's stats (a MoeClient) until no request runs and no KV block is used; raises
    AssertionError naming `what` and the last stats after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        st = client.stats()
        if st.requests_running == 0 and sum(r.kv_blocks_used for r in st.ranks) == 0:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: {st}")
        time.sleep(0.05)


def read_ports_file(path, timeout=30):
    """The ports a moe-coordinator started with --ports-file PATH wrote there ({"public", "cluster",
    "metrics"}), once it has; raises AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
        if time.monotonic() >= deadline:
            raise AssertionError(f"no ports in {path} after {timeout} s")
        time.sleep(0.1)
    with open(path) as f:
        return json.load(f)


def load_samples():
    with open(os.path.join(MODEL_DIR, "samples.json")) as f:
        return {s["prompt"]: s for s in json.load(f)["greedy_samples"]}


def session_members(sid):
    """Pids of live (non-zombie) processes whose session id is `sid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(entry))
    return members


def processes_with_arg(needle):
    """Pids of live processes whose command line contains `needle`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if needle in cmdline and stat[stat.rfind(")") + 2] != "Z":
            pids.append(int(entry))
    return pids


def pid_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_alive(pid):
    """Whether `pid` is a live process (a zombie waiting to be reaped is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _default_signals():
    """In the launcher's process before exec: SIGINT and SIGTERM handled by default even when this
    test was started with them ignored (a shell runs background jobs with SIGINT ignored, and a
    script cannot trap a signal that was ignored when it started)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class LaunchedCluster:
    """deploy/launch-cluster.sh as a child process, its stdout lines read by a thread."""

    def __init__(self, extra_args=(), extra_env=None, model_dir=MODEL_DIR):
        self.openai = any(a.startswith("--openai-listen") for a in extra_args)
        self.openai_pid = None
        self.openai_address = None
        self.log = tempfile.NamedTemporaryFile(prefix="moe_launch_", suffix=".log", delete=False)
        env = dict(os.environ, **(extra_env or {}))
        env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
        self.proc = subprocess.Popen(
            [LAUNCHER, "--np", str(RANKS), "--model", model_dir, "--build-dir", BUILD_DIR,
             "--listen", "127.0.0.1:0", "--metrics-listen", "none", "--stop-timeout", "20", *extra_args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, preexec_fn=_default_signals)
        self.lines = queue.Queue()
        self.stdout = []
        threading.Thread(target=self._read, daemon=True).start()
        self.coordinator_pid = None
        self.mpirun_pid = None
        self.address = None
        self.cluster_port = None

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern, timeout):
        """The first match of `pattern` in the launcher's next stdout lines."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line matching {pattern!r} within {timeout}s; stdout so far:\n"
                                   + "\n".join(self.stdout) + "\n" + self.log_text())
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"launcher exited (status {self.proc.wait()}) before {pattern!r}; stdout:\n"
                                   + "\n".join(self.stdout) + "\n" + self.log_text())
            self.stdout.append(line)
            m = re.search(pattern, line)
            if m:
                return m

    def start(self):
        self.coordinator_pid = int(self.wait_for(r"coordinator pid (\d+)", 30).group(1))
        self.cluster_port = int(self.wait_for(r"ports public=\d+ cluster=(\d+)", 30).group(1))
        self.mpirun_pid = int(self.wait_for(r"mpirun pid (\d+)", 30).group(1))
        self.address = self.wait_for(r"serving on (\S+)", START_TIMEOUT_S).group(1)
        if self.openai:
            self.openai_pid = int(self.wait_for(r"openai pid (\d+)", 30).group(1))
            self.openai_address = self.wait_for(r"openai on (\S+)", 30).group(1)

    def start_or_kill(self):
        """start(), killing everything it left on failure: a setUpClass that raises gets no
        tearDownClass to do it."""
        try:
            self.start()
        except Exception:
            self.kill_everything()
            raise

    def log_text(self):
        try:
            with open(self.log.name, errors="replace") as f:
                return "--- launcher stderr ---\n" + f.read()[-6000:]
        except OSError:
            return ""

    def leftovers(self):
        pids = set()
        for sid in (self.coordinator_pid, self.mpirun_pid, self.openai_pid):
            if sid:
                pids.update(session_members(sid))
        if self.cluster_port:
            pids.update(processes_with_arg(f"--coordinator 127.0.0.1:{self.cluster_port}"))
        return sorted(pids)

    def kill_everything(self):
        """Last resort (a failed test): SIGKILL whatever the launcher left, by pid."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.unlink(self.log.name)


def mpi_rank_of(pid):
    """The MPI rank (OMPI_COMM_WORLD_RANK) of a process mpirun started, or None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    for var in env:
        if var.startswith(b"OMPI_COMM_WORLD_RANK="):
            return int(var.split(b"=", 1)[1])
    return None


def worker_pid(cluster_port, rank):
    """The moe-worker process of `rank` in the job serving the coordinator at `cluster_port`."""
    for pid in processes_with_arg(f"--coordinator 127.0.0.1:{cluster_port}"):
        if mpi_rank_of(pid) == rank:
            return pid
    return None
