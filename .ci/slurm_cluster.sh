#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, from Debian's packages, for tests and CI.
#
#   .ci/slurm_cluster.sh start STATE_DIR   # prints: export SLURM_CONF=STATE_DIR/slurm.conf
#   .ci/slurm_cluster.sh stop STATE_DIR    # stops the daemons this script started (by their PIDs)
#
# Everything lives in STATE_DIR: slurm.conf, the munge socket, spool and state directories, logs
# and the daemons' PID files. Outside it: /etc/munge/munge.key is created when missing, and
# /etc/slurm/slurm.conf becomes a link to STATE_DIR/slurm.conf while the cluster runs (Snakemake's
# job step drops SLURM_CONF before its inner srun, so the default path must work; an existing
# slurm.conf that this script did not link is left alone and start fails). The node is this
# host with all its CPUs and 80% of its memory, in one default partition named "pipeline"
# (profiles/slurm/config.yaml submits there).
# Needs root (it installs slurm-wlm and munge with apt-get when they are missing).
set -euo pipefail

PARTITION=pipeline
command=${1:-}
state=${2:-}
if [[ -z "$command" || -z "$state" ]]; then
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 2
fi
state=$(realpath -m "$state")
SYSTEM_CONF=/etc/slurm/slurm.conf

stop_cluster() {
    # Only the daemons whose PID files this script's start wrote, each by its own PID.
    for daemon in slurmd slurmctld munged; do
        pid_file="$state/$daemon.pid"
        [[ -s "$pid_file" ]] || continue
        pid=$(cat "$pid_file")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pid_file"
    done
    if [[ "$(readlink "$SYSTEM_CONF" 2>/dev/null)" == "$state/slurm.conf" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
}

if [[ "$command" == stop ]]; then
    stop_cluster
    exit 0
fi
if [[ "$command" != start ]]; then
    echo "unknown command $command: start or stop" >&2
    exit 2
fi

# One apt-get at a time: the test suite's other installers take the same lock (tests/debian.py),
# and the check waits for it too, so that packages another installer is still setting up are not
# taken for installed.
exec 9>>/run/lock/rl-pipeline-apt.lock
flock 9
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y --no-install-recommends slurm-wlm munge >&2; }
fi
exec 9>&-

if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    head -c 1024 /dev/urandom > /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi

if [[ -e "$SYSTEM_CONF" && ! -L "$SYSTEM_CONF" ]]; then
    echo "$SYSTEM_CONF exists and is not this script's link: a SLURM is configured here already" >&2
    exit 1
fi
mkdir -p "$state"/{munge,slurmctld,slurmd,log}
chmod 755 "$state" "$state/munge"
trap 'stop_cluster' ERR

munged --force --socket="$state/munge/munge.socket" --pid-file="$state/munged.pid" \
    --log-file="$state/log/munged.log" --seed-file="$state/munge/munged.seed"

host=$(hostname)
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
cat > "$state/slurm.conf" <<EOF
ClusterName=rlpipeline
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$state/slurmctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=$host CPUs=$(nproc) RealMemory=$memory_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
mkdir -p "$(dirname "$SYSTEM_CONF")"
ln -sfn "$state/slurm.conf" "$SYSTEM_CONF"
export SLURM_CONF="$state/slurm.conf"

slurmctld -f "$SLURM_CONF" -L "$state/log/slurmctld.log"
slurmd -f "$SLURM_CONF" -L "$state/log/slurmd.log"

for _ in $(seq 60); do
    if sinfo --noheader --responding --states=idle --format=%N 2>/dev/null | grep -q .; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "the SLURM node did not become idle; logs in $state/log" >&2
sinfo >&2 || true
stop_cluster
exit 1
