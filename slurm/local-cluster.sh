#!/usr/bin/env bash
# A local test SLURM cluster on this one machine, without systemd (Slurm 22.05 + munge + Open MPI/PMIx).
#
#   slurm/local-cluster.sh start [--nodes N] [--state DIR] [--subnet CIDR] [--timeout SECONDS]
#   slurm/local-cluster.sh stop [--state DIR]
#   slurm/local-cluster.sh status [--state DIR]
#
# start: N=1 runs munged, slurmctld and one slurmd (node n1) on this host at 127.0.0.1. N=2..8 puts each node
# in its own network namespace (swarm-n1..) on a private bridge (swarmbr0, default subnet 10.97.0.0/24) that
# exists only inside this machine; the controller listens on the bridge address. slurm.conf comes from
# `python -m swarm_hpc.ops.cluster.local` (the same renderer as `swarm-hpc cluster render`) and lives in
# STATE/etc. Waits until sinfo shows every node idle, then prints `export SLURM_CONF=...` on stdout (also
# written to STATE/env.sh), so `eval "$(slurm/local-cluster.sh start)"` configures the shell's clients.
# Running start again with the same settings does nothing; one local cluster runs at a time.
# stop: cancels all jobs and waits for them, shuts the daemons down, removes namespaces and bridge, and stops
# munged if start started it. Logs stay in STATE/log.
#
# Needs root and the Debian packages slurm-wlm (slurmctld, slurmd, slurm-client), munge, iproute2 and
# util-linux, plus a python with pydantic and jinja2 (PYTHON=..., default: the repo's .venv, else python3).
# Environment for Open MPI jobs: source swarm_hpc/templates/jobs/mpi-env.sh in the job script and use `srun --mpi=pmix`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=python3
    [[ -x $REPO/.venv/bin/python ]] && PYTHON=$REPO/.venv/bin/python
fi
MARKER=/run/swarm-hpc-local-slurm     # holds the state folder of the running local cluster
BRIDGE=swarmbr0
NS_PREFIX=swarm-
DEFAULT_STATE=/tmp/swarm-hpc-slurm

die() { echo "local-cluster: error: $*" >&2; exit 1; }
note() { echo "local-cluster: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

require() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it starts slurmctld/slurmd/munged and creates network namespaces)"
    local missing=() cmd
    for cmd in munged munge unmunge slurmctld slurmd sinfo squeue scancel scontrol ip nsenter runuser timeout; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) || die "missing commands: ${missing[*]}" \
        "(apt-get install slurm-wlm slurmctld slurmd slurm-client munge iproute2 util-linux)"
    "$PYTHON" -c 'import pydantic, jinja2' 2>/dev/null \
        || die "$PYTHON cannot import pydantic and jinja2 (set PYTHON=/path/to/venv/bin/python)"
}

# pid_alive PIDFILE: the daemon named in PIDFILE runs (checked by name, so a reused pid does not count).
pid_alive() {
    local pid comm
    [[ -s "$1" ]] || return 1
    pid=$(cat "$1")
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == slurmctld || $comm == slurmd || $comm == munged ]]
}
pid_gone() { ! pid_alive "$1"; }
kill_pidfile() { pid_alive "$1" && kill "-${2:-TERM}" "$(cat "$1")" 2>/dev/null; }

# wait_for SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds; fail after SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# --- munge -----------------------------------------------------------------------------------------------
munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_works && return 0
    [[ -s /etc/munge/munge.key ]] || die "no /etc/munge/munge.key (reinstall munge, or run: mungekey --create)"
    [[ -d /run/munge ]] || install -d -o munge -g munge -m 0755 /run/munge
    local d
    for d in /var/log/munge /var/lib/munge; do
        [[ -d $d ]] || install -d -o munge -g munge -m 0700 "$d"
    done
    runuser -u munge -- munged </dev/null >/dev/null 2>&1 \
        || die "munged failed to start (see /var/log/munge/munged.log)"
    wait_for 10 munge_works || die "munged does not answer (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$STATE/run/munged.pid"   # ours: stop stops it
}

stop_munge() {
    local pidfile="$STATE/run/munged.pid"
    [[ -s "$pidfile" ]] || return 0
    kill_pidfile "$pidfile" || true
    wait_for 10 pid_gone "$pidfile" || kill_pidfile "$pidfile" KILL || true
    rm -f "$pidfile"
}

# --- network namespaces ----------------------------------------------------------------------------------
ns_of() { echo "${NS_PREFIX}$1"; }

create_network() {
    ip link add "$BRIDGE" type bridge
    ip addr add "$CONTROLLER_ADDR/$PREFIX" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local node ns addr addr_var
    for node in $NODES; do
        ns=$(ns_of "$node"); addr_var="ADDR_$node"; addr=${!addr_var}
        ip netns add "$ns"
        ip link add "sw-$node" type veth peer name "swp-$node"
        ip link set "swp-$node" netns "$ns"
        ip -n "$ns" link set "swp-$node" name eth0
        ip -n "$ns" addr add "$addr/$PREFIX" dev eth0
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
        ip link set "sw-$node" master "$BRIDGE" up
        # The namespace's /etc/hosts (applied by `ip netns exec`; slurmd itself resolves nodes by NodeAddr).
        mkdir -p "/etc/netns/$ns"
        { echo "127.0.0.1	localhost"; grep -v '^#' "$STATE/etc/hosts"; } >"/etc/netns/$ns/hosts"
    done
    allow_forwarding
}

# Hosts with Docker set the iptables FORWARD policy to DROP, and bridged traffic passes through it
# (br_netfilter): let traffic between our own namespace nodes through, nothing else.
FORWARD_RULE=(FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT)
allow_forwarding() {
    command -v iptables >/dev/null 2>&1 || return 0
    iptables -C "${FORWARD_RULE[@]}" 2>/dev/null || iptables -I "${FORWARD_RULE[@]}" 2>/dev/null || true
}

remove_network() {
    if command -v iptables >/dev/null 2>&1; then
        while iptables -D "${FORWARD_RULE[@]}" 2>/dev/null; do :; done
    fi
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${NS_PREFIX}n[0-9]*$" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

# --- SLURM -----------------------------------------------------------------------------------------------
# wait_until_up SECONDS: all nodes idle; fails early when slurmctld has exited.
wait_until_up() {
    local deadline=$((SECONDS + $1)) grace=$((SECONDS + 3))
    until all_nodes_idle; do
        ((SECONDS < deadline)) || return 1
        if ((SECONDS > grace)) && ! pid_alive "$STATE/run/slurmctld.pid"; then
            note "slurmctld exited"
            return 1
        fi
        sleep 0.2
    done
}

all_nodes_idle() {
    local states
    states=$(SLURM_CONF="$SLURM_CONF" timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
    local node
    for node in $NODES; do
        grep -qx "$node idle" <<<"$states" || return 1
    done
}

start_daemons() {
    mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/run" "$STATE/log" "$STATE/storage"
    local node
    for node in $NODES; do
        install -d -m 1777 "$STATE/tmp/$node"
        mkdir -p "$STATE/spool/$node"
    done
    export SLURM_CONF
    slurmctld -c -f "$SLURM_CONF" </dev/null >>"$STATE/log/slurmctld.out" 2>&1
    for node in $NODES; do
        if ((NODE_COUNT == 1)); then
            slurmd -f "$SLURM_CONF" -N "$node" </dev/null >>"$STATE/log/slurmd-$node.out" 2>&1
        else
            # nsenter, not `ip netns exec`: under the latter slurmd fails to initialize its cgroup plugin.
            nsenter --net="/var/run/netns/$(ns_of "$node")" slurmd -f "$SLURM_CONF" -N "$node" \
                </dev/null >>"$STATE/log/slurmd-$node.out" 2>&1
        fi
    done
}

show_logs() {
    local f
    for f in "$STATE"/log/*.log "$STATE"/log/*.out; do
        [[ -s "$f" ]] || continue
        echo "--- $f (last lines)" >&2
        tail -n 15 "$f" >&2
    done
}

no_jobs() { [[ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ]]; }

all_gone() {
    local f
    for f; do pid_alive "$f" && return 1; done
    return 0
}

stop_slurm() {
    [[ -f "$SLURM_CONF" ]] || return 0
    export SLURM_CONF
    local pidfiles=("$STATE/run/slurmctld.pid" "$STATE"/run/slurmd-*.pid) f
    if pid_alive "$STATE/run/slurmctld.pid"; then
        local jobs
        jobs=$(timeout 5 squeue -h -o %A 2>/dev/null || true)
        if [[ -n "$jobs" ]]; then
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            wait_for 30 no_jobs || note "jobs still listed after 30 s; shutting down anyway"
        fi
        # Stops slurmctld and every slurmd it knows.
        if timeout 10 scontrol shutdown >/dev/null 2>&1; then
            wait_for 15 all_gone "${pidfiles[@]}" || true
        fi
    fi
    if ! all_gone "${pidfiles[@]}"; then
        for f in "${pidfiles[@]}"; do kill_pidfile "$f" || true; done
        if ! wait_for 5 all_gone "${pidfiles[@]}"; then
            for f in "${pidfiles[@]}"; do kill_pidfile "$f" KILL || true; done
            wait_for 5 all_gone "${pidfiles[@]}" || note "daemons still running: see ${pidfiles[*]}"
        fi
    fi
    rm -f "${pidfiles[@]}"
}

# --- commands --------------------------------------------------------------------------------------------
cmd_start() {
    local nodes=1 subnet=10.97.0.0/24 timeout_s=60
    STATE=$DEFAULT_STATE
    while (($#)); do
        case $1 in
            --nodes) nodes=${2:?}; shift 2 ;;
            --state) STATE=${2:?}; shift 2 ;;
            --subnet) subnet=${2:?}; shift 2 ;;
            --timeout) timeout_s=${2:?}; shift 2 ;;
            *) usage ;;
        esac
    done
    [[ $nodes =~ ^[1-8]$ ]] || die "--nodes must be 1 to 8 (got $nodes)"
    [[ $timeout_s =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds (got $timeout_s)"
    require
    mkdir -p "$STATE"
    STATE=$(cd "$STATE" && pwd)

    if [[ -s $MARKER ]]; then
        local running; running=$(cat "$MARKER")
        if [[ $running == "$STATE" && -s "$STATE/nodes" && $(cat "$STATE/nodes") == "$nodes" ]] \
            && pid_alive "$STATE/run/slurmctld.pid"; then
            SLURM_CONF="$STATE/etc/slurm.conf"; NODES=$(cat "$STATE/node-names")
            if all_nodes_idle || wait_for 10 all_nodes_idle; then
                echo "export SLURM_CONF=$SLURM_CONF"
                return 0
            fi
        fi
        if [[ $running != "$STATE" ]] && [[ -d $running ]] && pid_alive "$running/run/slurmctld.pid"; then
            die "another local cluster is running (state $running); run: $0 stop --state $running"
        fi
        (cmd_stop --state "$running")   # stale or different settings: clean up first
    fi
    remove_network   # leftovers of an earlier crash

    local vars
    vars=$(cd "$REPO" && PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m swarm_hpc.ops.cluster.local \
        --nodes "$nodes" --state "$STATE" --subnet "$subnet" --bridge "$BRIDGE") || exit 1
    eval "$vars"   # CONTROLLER CONTROLLER_ADDR PREFIX NODES ADDR_<node> SLURM_CONF (validated names and IPs)
    NODE_COUNT=$nodes
    echo "$STATE" >"$MARKER"
    trap on_start_failure EXIT   # from here on, any failure stops whatever was started
    echo "$nodes" >"$STATE/nodes"
    echo "$NODES" >"$STATE/node-names"
    mkdir -p "$STATE/run" "$STATE/log"

    start_munge
    ((nodes == 1)) || create_network
    start_daemons
    wait_until_up "$timeout_s" || { note "the cluster did not come up (limit ${timeout_s} s)"; exit 1; }
    trap - EXIT
    echo "export SLURM_CONF=$SLURM_CONF" >"$STATE/env.sh"
    echo "export SLURM_CONF=$SLURM_CONF"
}

on_start_failure() {
    local rc=$?
    ((rc != 0)) || return 0
    note "start failed; sinfo says:"
    SLURM_CONF="$SLURM_CONF" timeout 5 sinfo -N >&2 || true
    show_logs
    (cmd_stop --state "$STATE") || true
    exit "$rc"
}

cmd_stop() {
    STATE=""
    while (($#)); do
        case $1 in
            --state) STATE=${2:?}; shift 2 ;;
            *) usage ;;
        esac
    done
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    if [[ -z $STATE ]]; then
        [[ -s $MARKER ]] && STATE=$(cat "$MARKER") || STATE=$DEFAULT_STATE
    fi
    [[ -d $STATE ]] || { remove_network; return 0; }
    STATE=$(cd "$STATE" && pwd)
    SLURM_CONF="$STATE/etc/slurm.conf"
    stop_slurm
    remove_network
    stop_munge
    rm -rf "$STATE/tmp" "$STATE/env.sh"
    [[ -s $MARKER && $(cat "$MARKER") == "$STATE" ]] && rm -f "$MARKER"
    return 0
}

cmd_status() {
    local state=""
    if [[ ${1:-} == --state ]]; then
        state=${2:?}
    elif [[ -s $MARKER ]]; then
        state=$(cat "$MARKER")
    fi
    [[ -n $state && -f $state/etc/slurm.conf ]] || die "no local cluster is running"
    echo "export SLURM_CONF=$state/etc/slurm.conf"
    SLURM_CONF="$state/etc/slurm.conf" timeout 5 sinfo -N >&2
}

case ${1:-} in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    *) usage ;;
esac
