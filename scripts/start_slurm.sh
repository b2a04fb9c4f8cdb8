#!/usr/bin/env bash
# Bring up a one-node Slurm cluster (munged + slurmctld + slurmd, optionally slurmdbd + MariaDB
# for sacct) on this machine, as root, without systemd: what the Slurm tests
# (tests/test_cluster.py, `pytest -m slurm`) run against. Debian/Ubuntu packages, ~8 s once
# installed. Idempotent: safe to run again; starts only what is not running.
# Usage: bash scripts/start_slurm.sh                     # squeue/scontrol/jobcomp log, no sacct
#        SLURM_ACCOUNTING=1 bash scripts/start_slurm.sh  # also slurmdbd -> sacct works
# Exits 77 if not root or without apt-get/dpkg (the tests skip then), non-zero if the node does
# not become idle.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "start_slurm.sh: needs root (installs packages, starts daemons as root)" >&2; exit 77
fi
if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
  echo "start_slurm.sh: needs a Debian-like system (dpkg, apt-get)" >&2; exit 77
fi

ACCT=${SLURM_ACCOUNTING:-0}
H=$(hostname -s)
PKGS="slurmctld slurmd slurm-client munge"
[ "$ACCT" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"

# 1. Packages (Debian 12: Slurm 22.05.8, munge 0.5.15, MariaDB 10.11)
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# 2. Munge key + daemon
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key --force
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok
fi

# 3. slurm.conf: one node named after the host, memory a bit below the machine's
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM=$(( MEM > 2048 ? MEM - 1024 : MEM ))
CPUS=$(nproc)
install -d -m 0755 /etc/slurm /run/slurm /var/spool/slurmd
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/log/slurm
if [ "$ACCT" = 1 ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none"
fi
cat > /etc/slurm/slurm.conf.new <<EOF
ClusterName=ci
SlurmctldHost=${H}(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
${ACCT_LINES}
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
NodeName=${H} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${H} Default=YES MaxTime=INFINITE State=UP
EOF
changed=0
if cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then
  rm -f /etc/slurm/slurm.conf.new
else
  mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; changed=1
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# 4. Optional accounting: MariaDB + slurmdbd (must be up before slurmctld)
if [ "$ACCT" = 1 ]; then
  mysqladmin ping >/dev/null 2>&1 || /etc/init.d/mariadb start >/dev/null
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm /etc/slurm/slurmdbd.conf
  chmod 0600 /etc/slurm/slurmdbd.conf
  running /run/slurm/slurmdbd.pid || /usr/sbin/slurmdbd
  for _ in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -n list cluster format=cluster | grep -qw ci || sacctmgr -i add cluster ci >/dev/null
fi

# 5. Slurm daemons (they daemonize and write the pid files above)
if running /run/slurm/slurmctld.pid; then
  if [ "$changed" = 1 ]; then   # accounting type changes need a restart
    kill "$(cat /run/slurm/slurmctld.pid)"
    while running /run/slurm/slurmctld.pid; do sleep 0.2; done
    /usr/sbin/slurmctld
  fi
else
  /usr/sbin/slurmctld
fi
running /run/slurm/slurmd.pid || /usr/sbin/slurmd

# 6. Wait until the node is idle (resume it if it came back down/drained)
st=""
for _ in $(seq 120); do
  st=$(sinfo -h -n "$H" -o %t 2>/dev/null || true)
  case "$st" in
    idle|mix|alloc) break ;;
    down*|drain*|drng*) scontrol update NodeName="$H" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.5
done
sinfo
case "$st" in
  idle|mix|alloc) echo "slurm: node $H is $st" ;;
  *) echo "slurm: node $H not ready (state '$st')" >&2; exit 1 ;;
esac
