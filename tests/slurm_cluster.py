"""A one-node SLURM cluster on loopback for the tests, from Debian's `slurm-wlm` and `munge` packages: munged on a
socket of its own, slurmctld and slurmd as root on free ports, every file under one folder. The jobs it runs are
real sbatch jobs: the scheduler, the job array and the environment a job starts in are SLURM's own.

    cluster = start(folder)         # returns the environment (SLURM_CONF) for sbatch, squeue, submitit
    ...
    stop(cluster)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]
    partition: str = "debug"


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _config(folder: Path, host: str, cpus: int, memory_mb: int) -> str:
    # root runs both daemons, so no slurm user must reach the folder; linuxproc and task/none need no cgroups
    return f"""\
ClusterName=research-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder / "munge" / "socket"}
StateSaveLocation={folder / "state"}
SlurmdSpoolDir={folder / "spool"}
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder / "slurmd.pid"}
SlurmctldLogFile={folder / "slurmctld.log"}
SlurmdLogFile={folder / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _memory_mb() -> int:
    total_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    return max(1024, total_kb // 1024 - 2048)  # leave the machine some room


def start(folder: Path, timeout: float = 30) -> Cluster:
    """Start munged, slurmctld and slurmd; returns once the node is idle. Raises RuntimeError with the daemons'
    last log lines when it does not come up."""
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "munge").chmod(0o700)
    key = folder / "munge" / "key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, host, os.cpu_count() or 1, _memory_mb()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    munge = folder / "munge"
    subprocess.run(
        [_program("munged"), "--force", f"--socket={munge / 'socket'}", f"--key-file={key}",
         f"--pid-file={munge / 'pid'}", f"--log-file={munge / 'log'}", f"--seed-file={munge / 'seed'}"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    for daemon in ("slurmctld", "slurmd"):
        subprocess.run([_program(daemon)], env=env, check=True, capture_output=True, text=True)
    cluster = Cluster(folder, env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
        if state == "idle":
            return cluster
        time.sleep(0.5)
    logs = "\n".join(
        (folder / f"{d}.log").read_text()[-800:] for d in ("slurmctld", "slurmd") if (folder / f"{d}.log").exists()
    )
    stop(cluster)
    raise RuntimeError(f"the test SLURM node did not become idle in {timeout:.0f} s:\n{logs}")


def wait_idle(cluster: Cluster, timeout: float = 300) -> None:
    """Until no job is queued or running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], env=cluster.env, capture_output=True, text=True)
        if not queue.stdout.strip():
            return
        time.sleep(1)
    raise TimeoutError(f"SLURM jobs still queued after {timeout:.0f} s: {queue.stdout.strip()}")


def stop(cluster: Cluster) -> None:
    """Stop the daemons by their pid files (jobs still running are cancelled first)."""
    subprocess.run(["scancel", "--full", "--user", "root"], env=cluster.env, capture_output=True)
    for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/pid"):
        path = cluster.folder / pid_file
        if path.exists():
            try:
                os.kill(int(path.read_text().split()[0]), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass  # already gone
    time.sleep(1)
