#!/usr/bin/env python3
"""What a two-node `ray start` cluster of this project exposes, measured in a private network
namespace (issue 12; the results are in docs/binding/README.md and docker/README.md).

    .venv/bin/python docs/binding/check_exposure.py docker-test   # as docker/test.sh step 4
    .venv/bin/python docs/binding/check_exposure.py cluster       # as compose / ray up / KubeRay

Run as root (it needs `unshare`). It runs itself again under `unshare --net --mount`:
- a network namespace of its own: only `lo` for `docker-test` (what podman's `--network none`
  gives the test's containers), or `lo` plus a veth with 198.51.100.1/24 (TEST-NET-2) and a
  default route for `cluster`, so that Ray takes that address as the node's, as on a machine
  of a real cluster. Nothing outside the namespace can reach it;
- a private tmpfs on /tmp, so Ray's /tmp/ray (and its `ray_current_cluster`) of other Ray
  instances on the machine are neither seen nor touched.
Inside, with token authentication on and a fresh token: a head and a worker started with the
flags of the recipe, a driver that connects with the token and puts an actor on the worker,
then every listening TCP socket of those processes, whether it accepts connections through
the node's non-loopback address, and what it answers a client without the token (the probes
of tests/test_binding.py). Then a second process tries `ray.init(address=...)` without the
token. Everything it started is stopped by process group; the namespace goes with it.
Exit status 1 if a listener other than a metrics endpoint serves a client without the token,
or, for `docker-test`, if anything listens off loopback.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

OUTSIDE = "198.51.100.1"
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")

SCENARIOS = {
    # docker/test.sh step 4, same flags (a smaller object store: binding does not depend on it)
    "docker-test": {
        "net": ["ip link set lo up"],
        "node_ip": "127.0.0.1",
        "head": [RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--port=6379",
                 "--dashboard-host=127.0.0.1", "--dashboard-port=8265",
                 "--ray-client-server-port=10001", "--num-cpus=0",
                 "--object-store-memory=100000000", "--min-worker-port=11000",
                 "--max-worker-port=11499", "--dashboard-agent-listen-port=52365",
                 "--dashboard-agent-grpc-port=52366", "--metrics-export-port=52367",
                 "--runtime-env-agent-port=52368"],
        "worker": [RAY, "start", "--address=127.0.0.1:6379", "--node-ip-address=127.0.0.1",
                   "--num-cpus=1", "--object-store-memory=100000000", "--min-worker-port=11500",
                   "--max-worker-port=11999", "--dashboard-agent-listen-port=52375",
                   "--dashboard-agent-grpc-port=52376", "--metrics-export-port=52377",
                   "--runtime-env-agent-port=52378"],
    },
    # docker/compose.yaml's head and worker (ray-cluster.yaml and KubeRay start the same way)
    "cluster": {
        "net": ["ip link set lo up", "ip link add v0 type veth peer name v1",
                f"ip addr add {OUTSIDE}/24 dev v0", "ip link set v0 up", "ip link set v1 up",
                "ip route add default dev v0"],
        "node_ip": OUTSIDE,
        "head": [RAY, "start", "--head", "--port=6379", "--dashboard-host=0.0.0.0",
                 "--dashboard-port=8265", "--num-cpus=0", "--object-store-memory=100000000"],
        "worker": [RAY, "start", f"--address={OUTSIDE}:6379", "--num-cpus=1",
                   "--object-store-memory=100000000"],
    },
}

DRIVER = r"""
import os, sys, time, ray
ray.init(address="auto", logging_level="warning")
@ray.remote(num_cpus=1)
class Probe:
    def node(self):
        return ray.get_runtime_context().get_node_id()
a = Probe.remote()
ray.get(a.node.remote())
print("ready", flush=True)
time.sleep(3600)
"""

TOKENLESS_CLIENT = r"""
import sys, ray
try:
    ray.init(address=sys.argv[1], logging_level="error")
    print("CONNECTED", ray.nodes()[0]["NodeManagerAddress"])
except Exception as e:
    print("REFUSED", type(e).__name__, str(e).splitlines()[0][:160])
"""


def pgroup_pids(pgids: set[int]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in pgids:
                pids.append(int(entry))
    return pids


def inside(name: str) -> int:
    import test_binding as tb

    sc = SCENARIOS[name]
    token = secrets.token_hex(32)
    home = Path("/tmp/home")
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    pgids: set[int] = set()
    driver = None
    try:
        for role in ("head", "worker"):
            p = subprocess.Popen(sc[role], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
            pgids.add(p.pid)
            _out, err = p.communicate(timeout=240)
            if p.returncode:
                print(f"{role}: ray start failed:\n{err[-2000:]}")
                return 1
        driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        pgids.add(driver.pid)
        if driver.stdout.readline().strip() != "ready":
            print("the driver did not get its actor onto the worker")
            return 1
        found, last, since = [], None, time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            roots = pgroup_pids(pgids)  # and their children: raylets start workers in groups of their own
            found = tb.listeners_of(sorted({d for r in roots for d in tb._descendants(r)}))
            key = [(x["pid"], x["port"]) for x in found]
            if key != last:
                last, since = key, time.monotonic()
            elif time.monotonic() - since > 5:
                break
            time.sleep(0.5)

        bearer = {"authorization": f"Bearer {token}"}
        outside = sc["node_ip"] if sc["node_ip"] != "127.0.0.1" else None
        bad = 0
        print(f"| listener | process | accepts via {outside or '(no non-loopback address)'} "
              "| a client without the token |")
        print("|---|---|---|---|")
        for x in found:
            reachable = (outside is not None and not tb.is_loopback(x["ip"])
                         and not tb.refused_from(outside, x["port"]))
            host = outside if reachable else "127.0.0.1"
            try:
                kind = tb.refuses_without_token(x["port"], bearer, host)
                verdict = "answered (Prometheus metrics)" if kind == "metrics" else f"refused ({kind})"
            except AssertionError as e:
                verdict, bad = f"SERVED: {e}", bad + 1
            if name == "docker-test" and not tb.is_loopback(x["ip"]):
                verdict, bad = verdict + "; OFF LOOPBACK", bad + 1
            print(f"| {x['ip']}:{x['port']} | {x['name']} | {'yes' if reachable else 'no'} "
                  f"| {verdict} |")

        client_env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN",)}
        client_env["HOME"] = str(home / "tokenless")
        for mode in ("token", None):
            e = dict(client_env)
            if mode is None:
                e.pop("RAY_AUTH_MODE")
            r = subprocess.run([sys.executable, "-c", TOKENLESS_CLIENT,
                                f"{outside or '127.0.0.1'}:6379"], env=e, capture_output=True,
                               text=True, timeout=120)
            line = (r.stdout.strip().splitlines() or [r.stderr.strip()[-200:]])[-1]
            print(f"\nray.init(address='{outside or '127.0.0.1'}:6379') from a second process "
                  f"without the token (RAY_AUTH_MODE={mode or 'unset'}): {line}")
            bad += line.startswith("CONNECTED")
        return 1 if bad else 0
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in pgids:
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(5)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--inside":
        return inside(sys.argv[2])
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        print(__doc__)
        return 2
    name = sys.argv[1]
    setup = " && ".join(["mount -t tmpfs -o mode=1777 tmpfs /tmp", *SCENARIOS[name]["net"]])
    cmd = ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c",
           f'{setup} && exec "$0" "$@"', sys.executable, str(Path(__file__).resolve()),
           "--inside", name]
    return subprocess.run(cmd, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
