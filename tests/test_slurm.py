"""The quick profile through the SLURM profile on a real (single-node) SLURM cluster.

.ci/slurm_cluster.sh starts munge, slurmctld and slurmd from Debian's packages on this machine
(installing them when missing; needs root) and stops them, by their process ids, at the end.
Every stage must run as a SLURM job, produce the same bytes as the local reference run
(``quick_run``), and leave DVC up to date: Snakemake on the submit host records the stages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.dag import read_dag
from stages.common.workspace import REPO_ROOT
from tests.conftest import file_digests, run

pytestmark = pytest.mark.e2e

CLUSTER_SCRIPT = REPO_ROOT / ".ci" / "slurm_cluster.sh"
BIN = Path(sys.executable).parent
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) "
                       r"\(log: (\S+/rule_(\w+)/\d+\.log)\)")


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """SLURM_CONF of a running one-node cluster; its daemons are stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root (apt-get, munge, slurmd)")
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([str(CLUSTER_SCRIPT), "start", str(state)], capture_output=True,
                             text=True)
    assert started.returncode == 0, f"cluster did not start:\n{started.stdout}\n{started.stderr}"
    pids = [int((state / f"{d}.pid").read_text()) for d in ("munged", "slurmctld", "slurmd")]
    try:
        yield str(state / "slurm.conf")
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", str(state)], check=True)
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists(), f"daemon {pid} still running"


def test_the_quick_profile_runs_as_slurm_jobs_and_matches_the_local_run(
        quick_run, quick_workspace, slurm_cluster, monkeypatch):
    ws = quick_workspace("slurm")
    monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    result = run([str(BIN / "snakemake"), "--profile", "profiles/slurm"], ws)
    log = result.stdout + result.stderr

    # One SLURM job per stage, each with the log SLURM wrote for it (<job id>.log, the id sbatch
    # returned) showing the job step ran the stage's rule to the end. (scontrol forgets finished
    # jobs after MinJobAge, so the logs are the record.)
    jobs = {rule: (job_id, Path(path)) for job_id, path, rule in SUBMITTED.findall(log)}
    stages = read_dag(ws)
    assert set(jobs) == {stage.rule_name for stage in stages}
    assert len({job_id for job_id, _ in jobs.values()}) == len(stages)
    for rule, (job_id, path) in jobs.items():
        job_log = path.read_text()
        assert path.name == f"{job_id}.log" and f"rule {rule}:" in job_log, path
        assert "1 of 1 steps (100%) done" in job_log, path

    # The same bytes as the local run, and DVC up to date (stages recorded by the submit host).
    outputs = sorted(o for stage in stages for o in stage.outs)
    assert file_digests(ws, outputs) == file_digests(quick_run, outputs)
    assert run([str(BIN / "dvc"), "status", "--json"], ws).stdout.strip() in ("{}", "")
