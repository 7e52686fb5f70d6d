"""The quick profile through the SLURM profile on a real (single-node) SLURM cluster.

.ci/slurm_cluster.sh starts munge, slurmctld and slurmd from Debian's packages on this machine
(installing them when missing; needs root) and stops them, by their process ids, at the end.
In a copy of the local reference run (``quick_run``), one stage of each kind of trainer loses its
outputs and resumable state (tabular, policy gradient, Keras DQN, TF-Agents); they and every stage
reading their outputs (evaluate, aggregate, the Pi bundle, the report) must then run as SLURM jobs
of their own, produce the same bytes as the local run, and leave DVC up to date: Snakemake on the
submit host records the stages. (The DVC pass of tests/test_pipeline.py reruns a stage of every
stage module; here each job costs a submission and a poll, so one per kind.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stages.core.dag import read_dag
from pipeline.workspace import REPO_ROOT
from pipeline.reproduction import measures_time
from tests.conftest import file_digests, one_stage_of_every_kind, remove_outputs, run, with_downstream

pytestmark = [pytest.mark.e2e, pytest.mark.system]

# A trainer of each kind: tabular, policy gradient, Keras DQN, TF-Agents.
KINDS = ("stages.mdp", "stages.pg_cartpole", "stages.dqn", "stages.custom_env")

CLUSTER_SCRIPT = REPO_ROOT / ".ci" / "slurm_cluster.sh"
BIN = Path(sys.executable).parent
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) "
                       r"\(log: (\S+/rule_(\w+)/\d+\.log)\)")


# The SLURM pass took 6-8 minutes on two cores beside other jobs; a run still going after this
# is stuck (a job that never leaves the queue), and the test says what the cluster looked like
# instead of hanging.
RUN_TIMEOUT_S = 1200


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def cluster_state(state: Path) -> str:
    """What a stuck run needs explained: the queue, the node, the daemons' last log lines."""
    parts = []
    for command in (["squeue", "--all"], ["sinfo", "--Node", "--long"], ["scontrol", "show", "node"]):
        shown = subprocess.run(command, capture_output=True, text=True)
        parts.append(f"$ {' '.join(command)}\n{shown.stdout}{shown.stderr}")
    for daemon in ("slurmctld", "slurmd"):
        log = state / "log" / f"{daemon}.log"
        lines = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else ["(no log)"]
        parts.append(f"{log}:\n" + "\n".join(lines))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """SLURM_CONF of a running one-node cluster; its daemons are stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root (apt-get, munge, slurmd)")
    state = tmp_path_factory.mktemp("slurm")
    # Installing slurm-wlm and munge from Debian's mirror, then starting them: minutes at most.
    started = subprocess.run([str(CLUSTER_SCRIPT), "start", str(state)], capture_output=True,
                             text=True, timeout=RUN_TIMEOUT_S)
    assert started.returncode == 0, f"cluster did not start:\n{started.stdout}\n{started.stderr}"
    pids = [int((state / f"{d}.pid").read_text()) for d in ("munged", "slurmctld", "slurmd")]
    try:
        yield str(state / "slurm.conf")
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", str(state)], check=True)
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists(), f"daemon {pid} still running"


def test_the_quick_profile_runs_as_slurm_jobs_and_matches_the_local_run(
        quick_run, clone_of_quick_run, slurm_cluster, monkeypatch):
    ws = clone_of_quick_run()
    dag = read_dag(ws)
    trainers = [stage for stage in one_stage_of_every_kind(dag) if stage.module in KINDS]
    assert len(trainers) == len(KINDS)
    remove_outputs(ws, trainers)
    chosen = with_downstream(dag, trainers)
    assert {"evaluate", "aggregate", "pi_bundle", "report"} <= {stage.name for stage in chosen}
    monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    try:
        result = run([str(BIN / "snakemake"), "--profile", "profiles/slurm"], ws, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as stuck:
        pytest.fail(f"snakemake --profile profiles/slurm still ran after {RUN_TIMEOUT_S} s\n"
                    f"{cluster_state(Path(slurm_cluster).parent)}\n"
                    f"snakemake printed:\n{_text(stuck.stdout)[-3000:]}\n{_text(stuck.stderr)[-3000:]}")
    log = result.stdout + result.stderr

    # One SLURM job per stage that lost its outputs (and none for the others), each with the log
    # SLURM wrote for it (<job id>.log, the id sbatch returned) showing the job step ran the
    # stage's rule to the end. (scontrol forgets finished jobs after MinJobAge, so the logs are
    # the record.)
    jobs = {rule: (job_id, Path(path)) for job_id, path, rule in SUBMITTED.findall(log)}
    assert set(jobs) == {stage.rule_name for stage in chosen}
    assert len({job_id for job_id, _ in jobs.values()}) == len(chosen)
    for rule, (job_id, path) in jobs.items():
        job_log = path.read_text()
        assert path.name == f"{job_id}.log" and f"rule {rule}:" in job_log, path
        assert "1 of 1 steps (100%) done" in job_log, path

    # The same bytes as the local run, and DVC up to date (stages recorded by the submit host).
    # (The Pi stages' results hold measured latencies and times: compared without them.)
    for stage in chosen:
        timed = measures_time(stage.name)
        assert file_digests(ws, stage.outs, timed) == file_digests(quick_run, stage.outs, timed), stage.name
    assert run([str(BIN / "dvc"), "status", "--json"], ws).stdout.strip() in ("{}", "")
