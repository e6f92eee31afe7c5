"""Issue 12: what a local run's Ray exposes.

The policy (README, "On a Ray cluster"): a local run (`leap-rl train` without `--address`)
starts a Ray whose every listening socket is on loopback, with token authentication on. The
test starts a real local Ray through the driver's own `_init_ray` in a subprocess (with an
empty HOME, so Ray's token is made fresh there, and Ray's default authentication mode), then
looks at the listening TCP sockets of that process and all of its descendants only (from
/proc, so other Ray instances on the machine are not seen), and checks from this process,
which holds no token:

- every listener is on a loopback address;
- a TCP connection to any of those ports through each of this machine's non-loopback
  addresses is refused;
- every Ray service refuses a client without the token: each gRPC server answers
  UNAUTHENTICATED to a call of the Ray service it hosts (and not with the token), each HTTP
  server answers 401 (and not with the token); the only listeners that answer without a token
  are Prometheus metrics endpoints (read-only telemetry, loopback only);
- the token file Ray uses is readable by its owner only.
"""

from __future__ import annotations

import fcntl
import http.client
import ipaddress
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

REPO = Path(__file__).resolve().parents[1]

# Runs in the subprocess: a local Ray exactly as `leap-rl train` starts it, one actor (a core
# worker server besides the driver's), then waits for a line on stdin before shutting down.
STARTER = r"""
import json, os, sys
import ray
from leap_rl.config import preset
from learner.driver import _init_ray

_init_ray(preset("ci"), None, sys.argv[1] == "1")

@ray.remote(num_cpus=0)
class Probe:
    def pid(self):
        return os.getpid()

actor = Probe.remote()
node = ray._private.worker._global_node
print(json.dumps({"actor_pid": ray.get(actor.pid.remote()), "node_ip": node.node_ip_address}),
      flush=True)
sys.stdin.readline()
ray.shutdown()
"""

# One read-only call of each Ray gRPC service (the dashboard agent's services share one
# server and one authentication interceptor). True: also called with the token, to show the
# token is what makes the difference; Pull with an empty request is only ever refused.
GRPC_PROBES = {
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo": True,       # GCS
    "/ray.rpc.NodeManagerService/GetNodeStats": True,         # raylet: node manager
    "/ray.rpc.ObjectManagerService/Pull": False,              # raylet: object manager
    "/ray.rpc.CoreWorkerService/GetCoreWorkerStats": True,    # driver and actors
    "/ray.rpc.LogService/ListLogs": True,                     # dashboard agent
    "/ray.rpc.events.EventAggregatorService/AddEvents": False,  # dashboard agent (aggregator)
    "/ray.rpc.RayletDriver/ClusterInfo": False,               # Ray Client server (`ray start`)
}
HTTP_PROBE_PATH = "/leap-rl-binding-probe"  # no route anywhere: auth middleware answers first


# ------------------------------------------------------------------ sockets of a process tree
def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _listening_inodes() -> dict[int, tuple[ipaddress._BaseAddress, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
            out[int(fields[9])] = (ipaddress.ip_address(raw), int(hex_port, 16))
    return out


def _name(pid: int) -> str:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"
    return os.path.basename(argv0.split(" ")[0])


def listeners(root: int) -> list[dict]:
    """The listening TCP sockets of ``root`` and its descendants: address, port, pid, name."""
    return listeners_of(_descendants(root))


def listeners_of(pids) -> list[dict]:
    """The listening TCP sockets (of this network namespace) held by ``pids``."""
    table = _listening_inodes()
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in table:
                ip, port = table[int(link[8:-1])]
                ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 -> 127.0.0.1
                found.append({"ip": ip, "port": port, "pid": pid, "name": _name(pid)})
    return sorted(found, key=lambda x: (x["pid"], x["port"]))


def is_loopback(ip: ipaddress._BaseAddress) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, what gRPC binds for 127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def machine_addresses() -> list[str]:
    """This machine's non-loopback addresses: each interface's IPv4 address, global IPv6."""
    addrs = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            try:
                res = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:  # SIOCGIFADDR: no IPv4 address on it
                continue
            ip = ipaddress.ip_address(res[20:24])
            if not ip.is_loopback:
                addrs.append(str(ip))
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            ip = ipaddress.ip_address(bytes.fromhex(line.split()[0]))
            if not (ip.is_loopback or ip.is_link_local):
                addrs.append(str(ip))
    except OSError:
        pass
    return addrs


# ------------------------------------------------------------------------------ the clients
def http_status(port: int, headers: dict, host: str = "127.0.0.1") -> tuple[int, bytes] | None:
    """(status, first bytes of the body) of a GET, or None if the server does not speak
    HTTP/1.1 (a gRPC server)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", HTTP_PROBE_PATH, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(64)
    except (http.client.HTTPException, ConnectionError):
        return None
    finally:
        conn.close()


def grpc_codes(port: int, metadata: list | None, methods, host: str = "127.0.0.1") -> dict[str, str]:
    import grpc

    codes = {}
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        for method in methods:
            try:
                channel.unary_unary(method)(b"", timeout=10, metadata=metadata)
                codes[method] = "OK"
            except grpc.RpcError as e:
                codes[method] = e.code().name
    return codes


def refuses_without_token(port: int, bearer: dict, host: str = "127.0.0.1", where: str = "") -> str:
    """What serves ``port``: "metrics" (Prometheus text, answers anyone: read-only), "http" or
    "grpc <services>"; AssertionError unless an HTTP server answers 401 without the token (and
    not with it) or a gRPC server answers UNAUTHENTICATED to its Ray service (and not with
    the token)."""
    where = where or f"port {port}"
    answer = http_status(port, {}, host)
    if answer is not None:  # HTTP/1.1
        status, body = answer
        if status == 200 and body.startswith(b"# "):
            return "metrics"
        assert status == 401, f"{where}: HTTP {status} without the token"
        with_token = http_status(port, bearer, host)
        assert with_token is not None and with_token[0] != 401, f"{where}: token refused"
        return "http"
    codes = grpc_codes(port, None, GRPC_PROBES, host)
    served = [m for m, code in codes.items() if code != "UNIMPLEMENTED"]
    assert served, f"{where}: a gRPC server with none of the known Ray services: {codes}"
    assert all(codes[m] == "UNAUTHENTICATED" for m in served), f"{where}: {codes}"
    safe = [m for m in served if GRPC_PROBES[m]]
    if safe:
        with_token = grpc_codes(port, list(bearer.items()), safe, host)
        assert all(c != "UNAUTHENTICATED" for c in with_token.values()), f"{where}: {with_token}"
    return "grpc " + ", ".join(m.split("/")[1].rsplit(".", 1)[-1] for m in served)


def refused_from(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect((address, port))
        except ConnectionRefusedError:
            return True
        except OSError:  # unreachable / timed out: not accepted either
            return True
        return False


# ------------------------------------------------------------------------------ the test
@pytest.fixture
def local_ray(tmp_path, request):
    """Start the subprocess; yield (its pid, what it printed, the token); shut it down."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
                        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", STARTER, "1" if request.param else "0"],
                            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"the local Ray did not start:\n{proc.stderr.read()[-3000:]}")
        token_file = tmp_path / ".ray" / "auth_token"
        yield proc.pid, json.loads(line), token_file
    finally:
        try:
            proc.stdin.write("done\n")
            proc.stdin.flush()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        # Whatever of this session is left (only this process group: never other Rays).
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(1)
        proc.wait(timeout=10)


def _settled_listeners(pid: int, must: set[str], must_pids: set[int], budget: float = 40) -> list[dict]:
    """Poll until the processes named in ``must`` and those in ``must_pids`` all listen and
    nothing changed for 3 s (the agents and metrics servers bind after ray.init returns)."""
    deadline, last, since = time.monotonic() + budget, None, time.monotonic()
    while True:
        now = listeners(pid)
        key = [(x["pid"], x["port"]) for x in now]
        if key != last:
            last, since = key, time.monotonic()
        names, pids = {x["name"] for x in now}, {x["pid"] for x in now}
        if must <= names and must_pids <= pids and time.monotonic() - since >= 3:
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(0.5)


@pytest.mark.parametrize("local_ray", [False, True], ids=["dashboard-off", "dashboard-on"],
                         indirect=True)
def test_local_ray_listens_on_loopback_only_and_refuses_clients_without_the_token(local_ray):
    pid, info, token_file = local_ray
    assert info["node_ip"] == "127.0.0.1", info

    must = {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}
    found = _settled_listeners(pid, must, {pid, info["actor_pid"]})
    table = "\n".join(f"  {x['ip']}:{x['port']}  pid {x['pid']}  {x['name']}" for x in found)
    assert must <= {x["name"] for x in found}, f"missing servers; listeners:\n{table}"
    assert {pid, info["actor_pid"]} <= {x["pid"] for x in found}, \
        f"the driver or the actor is not listening:\n{table}"

    # 1. loopback only
    outside = [x for x in found if not is_loopback(x["ip"])]
    assert not outside, f"listeners off loopback:\n{table}"

    # 2. nothing accepts a connection through the machine's own non-loopback addresses
    for address in machine_addresses():
        accepted = [x["port"] for x in found if not refused_from(address, x["port"])]
        assert not accepted, f"{address} accepts connections on ports {accepted}:\n{table}"

    # 3. the token: owner-only file, and each service refuses a client that lacks it
    assert token_file.is_file(), "Ray's token was not where Ray looks for it"
    assert stat.S_IMODE(token_file.stat().st_mode) & 0o077 == 0, oct(token_file.stat().st_mode)
    bearer = {"authorization": f"Bearer {token_file.read_text().strip()}"}
    kinds = {x["port"]: refuses_without_token(x["port"], bearer,
                                              where=f"{x['name']} (pid {x['pid']}) on port {x['port']}")
             for x in found}
    print("\n".join(f"{x['ip']}:{x['port']} {x['name']}: {kinds[x['port']]}" for x in found))
