"""A throw-away single-node SLURM cluster (Debian's SLURM 22.05 and MUNGE) for tests that submit real jobs.

A SLURM profile is only tested when sbatch accepts what it asks for and the jobs really run, so the test brings up
slurmctld + slurmd on this machine (root, no systemd) instead of mocking sbatch. Everything the daemons write lives
under one state directory; every daemon is started in the foreground by this module and stopped by its PID.

Choices that make a laptop or CI runner look like a GPU node:
- GPUs are GRES backed by character devices (`mknod c 1 3`, i.e. /dev/null's numbers), so `sbatch --gpus=1` is
  accepted and allocated exactly as on a real GPU node (SLURM sets CUDA_VISIBLE_DEVICES; no CUDA is involved).
- `SlurmdParameters=config_overrides`: the node is declared with the CPUs and memory the profile under test requests
  (at least what the machine has); without cgroups (`task/none`, `proctrack/linuxproc`) nothing is enforced.
- No slurmdbd (`accounting_storage/none`): `sacct` does not work, status checks must use `squeue`, and finished jobs
  stay visible to `squeue`/`scontrol` for MinJobAge seconds.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel", "munged")
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MIN_JOB_AGE_S = 600  # finished jobs stay queryable (scontrol, squeue) this long; the plugin needs >= 3x its check delay


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be provided here (not root, or the Debian packages cannot be installed): the reason says which."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")


def ensure_slurm_installed(timeout_s: float = 300) -> None:
    """Install slurmctld, slurmd, slurm-client and munge with apt-get unless their binaries are already there.

    Raises SlurmUnavailable (with apt's message) when not root or when apt-get is missing or fails; `apt-get update`
    is tried once if the first install fails (fresh containers ship without package lists).
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("bringing up slurmctld/slurmd needs root")
    if all(_which(b) for b in BINARIES):
        return
    apt = _which("apt-get")
    if apt is None:
        raise SlurmUnavailable(f"SLURM binaries missing and no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=120"]  # other test runs may hold the dpkg lock
    install = [apt, *lock, "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        subprocess.run([apt, *lock, "update"], env=env, capture_output=True, text=True, timeout=timeout_s)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout_s)
    missing = [b for b in BINARIES if not _which(b)]
    if result.returncode != 0 or missing:
        raise SlurmUnavailable(
            f"`apt-get install {' '.join(PACKAGES)}` failed (exit {result.returncode}, missing {missing}): "
            f"{(result.stderr or result.stdout)[-1500:]}"
        )


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports free right now (all bound at once, so they differ), for this cluster's daemons."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} does not exist)"


class SlurmCluster:
    """slurmctld + slurmd + munged for one node named after this host, state under `root`; use as a context manager.

    `env` is what a client needs (SLURM_CONF pointing at this cluster's slurm.conf); pass it to sbatch, squeue and to
    a Snakemake process that submits here. The node offers `gpus` fake GPUs, `cpus` CPUs and `memory_mb` MB.
    """

    def __init__(self, root: Path, *, cpus: int, memory_mb: int, gpus: int) -> None:
        if cpus < 1 or memory_mb < 1 or gpus < 0:
            raise ValueError(f"node needs cpus >= 1, memory_mb >= 1, gpus >= 0; got {cpus}, {memory_mb}, {gpus}")
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]  # NodeName must be `hostname -s` for slurmd to find itself
        self.cpus, self.memory_mb, self.gpus = cpus, memory_mb, gpus
        self.conf = self.root / "etc" / "slurm.conf"
        self.logs = self.root / "log"
        self.bin = self.root / "bin"  # an srun shim comes first on the PATH: see _write_srun_shim
        path = f"{self.bin}:{os.environ.get('PATH', '')}:{SBIN_PATH}"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._munge_dir: Path | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 60) -> None:
        """Write the configuration, start munged, slurmctld and slurmd, and wait until the node is idle."""
        for d in ("bin", "etc", "log", "state", "spool", "dev"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        socket_path = self._start_munge()
        self._write_config(socket_path)
        self._write_srun_shim()
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c"])
        self._spawn("slurmd", [_which("slurmd"), "-D"])
        self._wait_idle(timeout_s)

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop slurmd, slurmctld and munged by PID (SIGTERM, then SIGKILL)."""
        if any(name == "slurmctld" and p.poll() is None for name, p in self._procs):
            self._cancel_jobs()
        for name, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self._procs.clear()
        if self._munge_dir is not None:
            shutil.rmtree(self._munge_dir, ignore_errors=True)
            self._munge_dir = None

    @property
    def pids(self) -> dict[str, int]:
        """PID of every daemon started here (munged, slurmctld, slurmd)."""
        return {name: p.pid for name, p in self._procs}

    # -- queries -------------------------------------------------------------------------------------------------

    def run(self, *cmd: str, timeout_s: float = 30) -> str:
        """Run a SLURM client command against this cluster and return its stdout (raises on a non-zero exit)."""
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol -d show job` of one job as KEY -> value (finished jobs are kept for MinJobAge seconds).

        The detailed form includes the GRES the job was allocated (JOB_GRES, and GRES with device indices).
        """
        record: dict[str, str] = {}
        for token in self.run("scontrol", "-d", "-o", "show", "job", job_id).split():
            key, sep, value = token.partition("=")
            if sep:
                record[key] = value
        return record

    def diagnostics(self) -> str:
        """The tails of the daemon logs, for assertion messages."""
        return "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(self.logs.glob("*.log")))

    # -- internals -----------------------------------------------------------------------------------------------

    def _start_munge(self) -> Path:
        """Start munged as the munge user with its socket, key copy, pid, log and seed in a private directory.

        That directory is not under `root`: munged runs unprivileged and refuses insecure paths, and pytest's
        tmp_path lies under a root-only (0700) directory it cannot traverse. It is removed by stop().
        """
        user = pwd.getpwnam("munge")
        self._munge_dir = Path(tempfile.mkdtemp(prefix="molinfluence-munge-"))
        os.chown(self._munge_dir, user.pw_uid, user.pw_gid)
        self._munge_dir.chmod(0o711)  # clients must reach the socket; munged refuses a socket directory without o+x
        key = self._munge_dir / "munge.key"
        system_key = Path("/etc/munge/munge.key")
        key.write_bytes(system_key.read_bytes() if system_key.exists() else os.urandom(1024))
        os.chown(key, user.pw_uid, user.pw_gid)
        key.chmod(0o400)
        socket_path = self._munge_dir / "munge.socket"
        cmd = [
            _which("munged"),
            "--foreground",
            f"--socket={socket_path}",
            f"--key-file={key}",
            f"--pid-file={self._munge_dir / 'munged.pid'}",
            f"--log-file={self._munge_dir / 'munged.log'}",
            f"--seed-file={self._munge_dir / 'munged.seed'}",
        ]
        self._spawn("munged", cmd, user=user)
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not create {socket_path}:\n{_tail(self._munge_dir / 'munged.log')}")
            time.sleep(0.1)
        return socket_path

    def _write_config(self, munge_socket: Path) -> None:
        r = self.root
        devices = []
        for i in range(self.gpus):
            dev = r / "dev" / f"fakegpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            devices.append(dev)
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(
            f"""# single-node test cluster written by tests/slurm_cluster.py
ClusterName=molinfluence-ci
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={self.logs / "slurmctld.log"}
SlurmdLogFile={self.logs / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge={MIN_JOB_AGE_S}
KillWait=5
InactiveLimit=0
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb}{gres} State=UNKNOWN
PartitionName=ci Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        )
        # gres.conf is read from slurm.conf's directory
        lines = ["AutoDetect=off"] + [f"NodeName={self.host} Name=gpu File={d}" for d in devices]
        (self.conf.parent / "gres.conf").write_text("\n".join(lines) + "\n")

    def _write_srun_shim(self) -> None:
        """An `srun` that restores SLURM_CONF, for job steps started inside batch jobs of this cluster.

        snakemake-executor-plugin-slurm-jobstep (0.6) removes every SLURM_* variable except the job's identity before
        its `srun` inside the job, SLURM_CONF included, so srun only finds a slurm.conf at the compiled-in
        /etc/slurm/slurm.conf. This cluster's configuration lives under `root` (no global state), so the shim puts it
        back; the real srun still runs the step. Jobs inherit the PATH (sbatch --export=ALL).
        """
        real = _which("srun")
        if real is None:
            raise RuntimeError("srun not found (package slurm-client)")
        shim = self.bin / "srun"
        shim.write_text(f'#!/bin/sh\nSLURM_CONF="${{SLURM_CONF:-{self.conf}}}" exec {real} "$@"\n')
        shim.chmod(0o755)

    def _spawn(self, name: str, cmd: list[str], user: pwd.struct_passwd | None = None) -> None:
        out = open(self.logs / f"{name}.out.log", "ab")
        try:
            ids = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, **ids)
        finally:
            out.close()
        self._procs.append((name, proc))

    def _check_alive(self) -> None:
        dead = [f"{name} (exit {p.returncode})" for name, p in self._procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"SLURM daemon(s) exited: {', '.join(dead)}\n{self.diagnostics()}")

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            result = subprocess.run(
                ["sinfo", "-h", "-N", "-n", self.host, "-o", "%T"], env=self.env, capture_output=True, text=True
            )
            state = result.stdout.strip() or result.stderr.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"node {self.host} not idle after {timeout_s} s (last state: {state!r})\n{self.diagnostics()}"
        )

    def _cancel_jobs(self) -> None:
        try:
            ids = self.run("squeue", "-h", "-o", "%A", timeout_s=15).split()
            if ids:
                self.run("scancel", *ids, timeout_s=15)
                deadline = time.monotonic() + 30
                while self.run("squeue", "-h", "-o", "%A", timeout_s=15).split() and time.monotonic() < deadline:
                    time.sleep(0.5)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # the daemons are stopped next either way
