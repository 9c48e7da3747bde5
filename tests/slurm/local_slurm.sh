#!/usr/bin/env bash
# A throw-away two-node SLURM cluster on this machine, for testing profiles/slurm for real.
#   tests/slurm/local_slurm.sh install   install the Debian packages when missing (needs root)
#   tests/slurm/local_slurm.sh start     start munged + slurmctld + two slurmd; waits until the nodes are idle
#   tests/slurm/local_slurm.sh stop      stop the daemons started by `start` and remove their config
#   tests/slurm/local_slurm.sh status    exit 0 when the cluster answers and the node is usable
# Two nodes n1 and n2, both this host (NodeHostname=`hostname -s`, NodeAddr=127.0.0.1, one slurmd
# each on its own Port, `slurmd -N <node>`; the node names do not resolve: jobs spanning both find
# each other through NodeAddr), each with this machine's CPUs and memory, one default partition
# named "gpu" (the partition profiles/slurm asks for), two fake GPUs per node (gres with
# File=/dev/null and /dev/zero: a file-less GPU gres is dropped and drains the node), no accounting (sacct does not work: use slurm-status-command squeue),
# no cgroups (proctrack/linuxproc). As strict as a production site where one host allows: tasks bound
# to their CPUs (task/affinity, cores declared per node), memory a consumable resource that a job must
# ask for (CR_Core_Memory), and WaitTime=1: srun kills a step's other tasks 1 s after its first task
# exits. munged runs with its own key and socket.
# The jobstep plugin strips SLURM_CONF inside jobs, so the config is written to /etc/slurm/slurm.conf;
# `start` refuses to overwrite a slurm.conf it did not write. State lives in $OPGRPO_SLURM_DIR.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin  # the daemons live in sbin, not always on a non-root PATH

DIR=${OPGRPO_SLURM_DIR:-/tmp/opgrpo-slurm}
ETC=/etc/slurm
MARK="# written by opgrpo tests/slurm/local_slurm.sh"
PARTITION=gpu

die() { echo "local_slurm: $*" >&2; exit 1; }

ours() { [[ -f $ETC/slurm.conf ]] && head -n1 "$ETC/slurm.conf" | grep -qxF "$MARK"; }

have_slurm() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
  && command -v sbatch >/dev/null && command -v munged >/dev/null; }

install() {
  have_slurm && return 0
  [[ $(id -u) == 0 ]] || die "SLURM is not installed and installing it needs root"
  command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get to install it"
  local pkgs=(slurmctld slurmd slurm-client munge)
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${pkgs[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${pkgs[@]}" >/dev/null; } \
    || die "apt-get install ${pkgs[*]} failed"
  have_slurm || die "installed ${pkgs[*]} but slurmctld/slurmd/sbatch/munged are still missing"
}

write_config() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  # slurmd refuses a node that claims more memory than it has; leave a little for the OS
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10 ))
  mkdir -p "$ETC"
  cat >"$ETC/slurm.conf" <<EOF
$MARK
ClusterName=opgrpo-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/slurmd-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
# a step's remaining tasks are killed this long after its first task ends (sites set it; our rank step's
# task 0 exits at once, so the ranks must be launched with --wait=0); short, so a test job outlives it
WaitTime=1
# the declared topology (below) is what Slurm binds to, whatever this host's hardware reports
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
# finished jobs stay visible to squeue (the status command without accounting) for 10 minutes
MinJobAge=600
GresTypes=gpu
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17011 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17012 CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$ETC/gres.conf" <<EOF
$MARK
NodeName=n1,n2 Name=gpu File=/dev/null
NodeName=n1,n2 Name=gpu File=/dev/zero
EOF
}

pid_of() { [[ -f $1 ]] && cat "$1"; }

alive() { local p; p=$(pid_of "$1") && [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }

NODES=(n1 n2)

# the nodes' states, distinct ones joined by commas ("idle" when every node is idle)
node_state() { sinfo -h -N -o %t 2>/dev/null | sort -u | paste -sd, -; }

start() {
  [[ $(id -u) == 0 ]] || die "starting the test cluster needs root (the daemons run as root)"
  install
  if [[ -f $ETC/slurm.conf ]] && ! ours; then
    die "$ETC/slurm.conf exists and was not written by this script; not touching a real cluster"
  fi
  stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
  mkdir -p "$DIR/munge" "$DIR/ctld" "$DIR/slurmd-n1" "$DIR/slurmd-n2"
  chmod 700 "$DIR/munge"
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
  chmod 400 "$DIR/munge/munge.key"
  munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
  write_config
  slurmctld -i
  local n
  for n in "${NODES[@]}"; do slurmd -N "$n"; done
  local state
  for _ in $(seq 1 60); do
    state=$(node_state)
    case $state in
      idle) echo "local_slurm: nodes ${NODES[*]} idle in partition $PARTITION ($DIR)"; return 0 ;;
      *drain*|*drng*|*down*) scontrol update nodename=n1,n2 state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  echo "local_slurm: node did not become idle (state: ${state:-none}); logs:" >&2
  tail -n 20 "$DIR/slurmctld.log" "$DIR"/slurmd-*.log >&2 || true
  exit 1
}

stop() {
  if command -v squeue >/dev/null && ours; then
    scancel --full $(squeue -h -o %i 2>/dev/null) >/dev/null 2>&1 || true
  fi
  local f p
  for f in "$DIR/slurmd-n1.pid" "$DIR/slurmd-n2.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if alive "$f"; then
      p=$(pid_of "$f")
      kill "$p" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$p" 2>/dev/null || true
    fi
  done
  if ours; then rm -f "$ETC/slurm.conf" "$ETC/gres.conf"; fi
}

status() {
  ours && alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd-n1.pid" && alive "$DIR/slurmd-n2.pid" \
    && [[ $(node_state) =~ ^((idle|mix|alloc),?)+$ ]]
}

case ${1:-} in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 install|start|stop|status" ;;
esac
