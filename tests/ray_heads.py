"""Ray heads of a test's own, on this machine, that end without touching anyone else's Ray.

`start_head` runs `ray start --head --block` with every port it opens chosen free and a
temp folder of its own, so it neither meets nor disturbs another Ray on the machine (the
user's, or another test run's); `Head.stop` ends exactly the processes it started, by PID,
and never runs `ray stop`, which kills every Ray process on the machine.

With `autoscaling`, the head runs Ray's autoscaler (v2, as `ray up` does) over Ray's fake
multi-node provider, loaded as an external provider: worker nodes are real raylets
started and removed on this machine by the autoscaler. (`ray.cluster_utils.
AutoscalingCluster` does the same but reads an example.yaml missing from Ray 2.60's wheel,
and runs `ray stop --force` at start and shutdown.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
# The fake provider's fixed id of the head; Ray's autoscaler v2 matches nodes by it.
FAKE_HEAD_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
HEAD_TYPE = "ray.head.default"
START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # "pid (name) state ppid ...", and the name may hold spaces.
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every living process started by `pid`, directly or not."""
    children = _children()
    found, frontier = [], [pid]
    while frontier:
        offspring = children.get(frontier.pop(), [])
        found += offspring
        frontier += offspring
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def parent_pid(pid: int) -> int:
    """The parent of `pid`, 0 when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def busy_worker_node(head: Head) -> int | None:
    """The raylet of a worker node (one the autoscaler started, not the head's own) with a
    Ray worker busy on a task or actor, e.g. the node running a trial or a Train worker."""
    for raylet in descendants(head.process.pid):
        if b"raylet" not in _cmdline(raylet) or parent_pid(raylet) == head.process.pid:
            continue
        for pid in descendants(raylet):
            title = _cmdline(pid)
            if title.startswith(b"ray::") and not title.startswith(b"ray::IDLE"):
                return raylet
    return None


def reclaim(raylet: int) -> None:
    """A whole node at once, as a spot reclaim takes a machine: its raylet and every process
    it started, SIGKILLed. The autoscaler then sees the node dead and removes it."""
    for pid in [raylet, *descendants(raylet)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def autoscaling_config(port: int, worker_types: dict[str, dict[str, Any]],
                       idle_timeout_s: float) -> dict[str, Any]:
    """A cluster config in `ray up`'s form for the fake provider: a head of no CPUs (so
    work runs only on worker nodes the autoscaler starts) and `worker_types`."""
    return {
        "cluster_name": f"lrwa-test-{port}",
        "max_workers": sum(node["max_workers"] for node in worker_types.values()),
        "idle_timeout_minutes": idle_timeout_s / 60,
        "upscaling_speed": 10,
        "provider": {"type": "external", "module": FAKE_PROVIDER,
                     "gcs_address": f"127.0.0.1:{port}", "launch_multiple": True,
                     "head_node_id": FAKE_HEAD_ID, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "nobody"},
        "head_node_type": HEAD_TYPE,
        "available_node_types": {
            HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            **{name: {"node_config": {}, "min_workers": 0, **node}
               for name, node in worker_types.items()}},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


class Head:
    """One `ray start --head --block` process and what it started."""

    def __init__(self, folder: Path, process: subprocess.Popen, port: int,
                 config: dict[str, Any] | None) -> None:
        self.folder = folder
        self.process = process
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.config = config
        self.temp_dir = ""  # Ray's own folder: sockets, session logs
        self.config_file = folder / "autoscaling.yaml"  # `ray up`'s bootstrap config, in effect
        self.log = folder / "head.log"

    def processes(self) -> list[int]:
        return [self.process.pid, *descendants(self.process.pid)]

    def stop(self) -> None:
        """Every process `ray start` started (the autoscaler's worker nodes included) and
        itself: frozen first, so that none starts another, then SIGKILLed. A test cluster
        keeps nothing worth a graceful stop, which would take Ray's 20 s drain."""
        started = [self.process.pid, *descendants(self.process.pid)]
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        self.process.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in started[1:]) and (
                time.monotonic() < deadline):
            time.sleep(0.2)  # killed, being reaped
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def ray_env(self, **extra: str) -> dict[str, str]:
        """This process's environment for a driver that joins the head."""
        return {**os.environ, "RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "disabled",
                **extra}


def start_head(folder: Path, *, num_cpus: int = 0, env: dict[str, str] | None = None,
               worker_types: dict[str, dict[str, Any]] | None = None,
               idle_timeout_s: float = 5.0) -> Head:
    """A head of its own in `folder` (Ray's temp folder is a short one under /tmp: Ray's
    socket paths must stay under 108 bytes). With `worker_types`, an autoscaling head."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="lrwa-ray-")
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               f"--port={port}", f"--num-cpus={num_cpus}", "--include-dashboard=false",
               "--disable-usage-stats", f"--temp-dir={temp_dir}",
               f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}"]
    # Token authentication only where a test asks for it: `ray start` turns it on by itself
    # when ~/.ray/auth_token exists, and a driver joining an address sends no token.
    process_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    process_env.pop("RAY_ADDRESS", None)
    config = None
    if worker_types is not None:
        config = autoscaling_config(port, worker_types, idle_timeout_s)
        (folder / "autoscaling.yaml").write_text(yaml.safe_dump(config))
        command.append(f"--autoscaling-config={folder / 'autoscaling.yaml'}")
        process_env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                            "RAY_enable_autoscaler_v2": "1",
                            "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_ID,
                            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_ID})
    log = open(folder / "head.log", "wb")  # noqa: SIM115 - the head writes it until stop
    process = subprocess.Popen(command, env=process_env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    head = Head(folder, process, port, config)
    head.temp_dir = temp_dir
    deadline = time.monotonic() + START_TIMEOUT_S
    while b"will now block forever" not in head.log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            head.stop()
            raise RuntimeError(f"the Ray head did not start:\n{head.log.read_text()[-3000:]}")
        time.sleep(0.5)
    return head


def cluster_nodes(address: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The alive nodes of the cluster at `address`, read by a separate short process (so
    this process's own Ray session, if any, is not disturbed)."""
    # The answer is the line tagged NODES: Ray may print warnings to stdout after it (e.g.
    # "raylet has lagging heartbeats" on a busy machine).
    script = (f"import json, ray; ray.init(address={address!r}, log_to_driver=False, "
              "logging_level='ERROR'); print('NODES ' + json.dumps([n['Resources'] for n in "
              "ray.nodes() if n['Alive']]), flush=True)")
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=120, check=True)
    (answer,) = [line for line in output.stdout.splitlines() if line.startswith("NODES ")]
    return json.loads(answer.removeprefix("NODES "))
