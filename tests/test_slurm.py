"""The workflow on a real SLURM cluster: a one-node cluster (slurmctld + slurmd + munged, Debian's
slurm-wlm 22.05 and munge) started in a temporary folder, the tiny demo run through
`snakemake --workflow-profile profiles/slurm`, every rule a SLURM job, the results equal to a local run.

`make slurm-packages` installs the daemons (root, apt); without them the test is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo")
NODE_CPUS = 2

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = {
    "demo": {"name": "tiny", "seed": 7, "num_views": 3, "width": 64, "height": 48},
    "train": {"batch_size": 1, "width": 64, "height": 48, "progress": False, "num_threads": 1},
    "fuse": {"min_consistent_views": 1},
}


def _missing_daemons() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_conf(root: Path, ctld_port: int, slurmd_port: int) -> str:
    # One node, this machine, with two partitions named like the profile's (cpu and gpu) but no
    # GPU; memory is not a consumable (CR_CPU) and the configured memory is taken as given.
    return f"""\
ClusterName=selfmvs-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
MinJobAge=3600
NodeName=localhost CPUs={NODE_CPUS} RealMemory=16000 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
"""


def _stop(pid_file: Path) -> None:
    if pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text().split()[0]), 15)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running one-node cluster; yields the environment its clients need (SLURM_CONF)."""
    missing = _missing_daemons()
    if missing:
        pytest.skip(f"SLURM/munge not installed (missing {', '.join(missing)}): `make slurm-packages` installs them")
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster runs its daemons as root")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir()
    subprocess.run(["mungekey", "--create", f"--keyfile={root}/munge.key"], check=True, capture_output=True)
    subprocess.run(["munged", "--force", f"--socket={root}/munge.socket", f"--key-file={root}/munge.key",
                    f"--log-file={root}/log/munged.log", f"--pid-file={root}/munged.pid",
                    f"--seed-file={root}/munged.seed"], check=True, capture_output=True)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, _free_port(), _free_port()))
    # Inside a job the plugin's jobstep starts the rule with `srun` in an environment stripped of
    # SLURM_* variables, SLURM_CONF included, so srun looks only where a cluster installs its config
    # (/etc/slurm/slurm.conf). This cluster's config lives here: an `srun` first on PATH names it.
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun")} "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, capture_output=True, env=env)
        subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], check=True, capture_output=True, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout
            if state.strip().startswith("idle"):
                break
            time.sleep(1)
        else:
            logs = "".join((root / "log" / name).read_text()[-2000:] for name in ("slurmctld.log", "slurmd.log")
                           if (root / "log" / name).is_file())
            pytest.fail(f"the one-node cluster did not come up (sinfo: {state!r}):\n{logs}")
        yield {"env": env, "root": root}
    finally:
        _stop(root / "slurmd.pid")
        _stop(root / "slurmctld.pid")
        _stop(root / "munged.pid")


def _cpu_cluster_profile(folder: Path) -> Path:
    """profiles/slurm as shipped, fitted to the test node: no GPUs (the GPU stages run the network on
    the CPU, infer.device: cpu), at most NODE_CPUS CPUs a job, squeue for job states (the node keeps
    finished jobs for MinJobAge; there is no accounting database for sacct, so the plugin finds no
    account to guess and submits without one, as the profile's empty slurm_account asks)."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    for resources in [profile["default-resources"], *profile["set-resources"].values()]:
        if "gpu" in resources:
            resources["gpu"] = 0
        if "cpus_per_task" in resources:
            resources["cpus_per_task"] = min(resources["cpus_per_task"], NODE_CPUS)
    profile["set-threads"] = {rule: min(n, NODE_CPUS) for rule, n in profile["set-threads"].items()}
    profile.update({"slurm-status-command": "squeue", "slurm-keep-successful-logs": True,
                    "slurm-init-seconds-before-status-checks": 5, "latency-wait": 10})
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def _run(args, cwd, env, timeout):
    result = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result


def _depth_datasets(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def test_tiny_demo_on_a_one_node_slurm_cluster(slurm_cluster, tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    profile = _cpu_cluster_profile(tmp_path / "profile")
    cluster_run, local_run = tmp_path / "cluster", tmp_path / "local"
    _run(["--workflow-profile", str(profile), "--configfile", str(tmp_path / "tiny.yaml"), "--directory", str(cluster_run)],
         cwd=REPO, env=slurm_cluster["env"], timeout=1800)
    _run(["--cores", "2", "--configfile", str(tmp_path / "tiny.yaml"), "--directory", str(local_run)],
         cwd=REPO, env=os.environ, timeout=1800)

    # Every rule but the local config snapshot ran as a SLURM job (the plugin's log per job, named
    # by rule and job id), and SLURM recorded each of those jobs as COMPLETED in its partition.
    logs = {path.stem: path.relative_to(cluster_run / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
            for path in (cluster_run / ".snakemake" / "slurm_logs").rglob("*.log")}
    # The workflow's defaults (no per-scene fine-tuning; the fine-tuning rules' GPU requests are checked
    # by tests/test_workflow.py's dry run of this profile).
    expected = {"demo_scene", "prepare", "infer", "fuse", "evaluate", "report"}
    assert set(logs.values()) == expected, logs
    completed = {}
    for line in (slurm_cluster["root"] / "jobcomp.log").read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        completed[fields["JobId"]] = (fields["JobState"], fields["Partition"])
    for job_id, rule in logs.items():
        state, partition = completed[job_id]
        assert state == "COMPLETED", (rule, state)
        wants_gpu_partition = rule == "infer"
        assert partition == ("gpu" if wants_gpu_partition else "cpu"), (rule, partition)

    # The same results as the local run: depth maps and fused points byte for byte.
    cluster_scene, local_scene = cluster_run / "results" / "tiny", local_run / "results" / "tiny"
    cluster_depth, local_depth = _depth_datasets(cluster_scene / "depth.h5"), _depth_datasets(local_scene / "depth.h5")
    assert cluster_depth.keys() == local_depth.keys() and any(name.endswith("depth") for name in cluster_depth)
    for name, array in cluster_depth.items():
        np.testing.assert_array_equal(array, local_depth[name], err_msg=name)
    assert (cluster_scene / "fused.ply").read_bytes() == (local_scene / "fused.ply").read_bytes()
    assert (cluster_scene / "report" / "index.html").is_file() and (cluster_scene / "eval.json").is_file()
