"""A stage's outputs as one set: replaced together or not at all, the training log included; a
killed run's temporary files removed by the next run; timings kept out of the outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from stages.pi_bundle.archive import write_reproducible_tar_gz
from stages.core.io import (
    atomic_folder,
    output_set,
    remove_leftovers,
    staged,
    temporary_name,
    write_json,
    write_text,
)
from stages.core.live_log import TrainingLive, read_history
from stages.core.timings import read_timings, write_timings

REPO = Path(__file__).resolve().parents[1]

# A stage in miniature: a training log of `episodes` rows, then a policy folder, a figure-like
# file and metrics, all in one output set; after `pause_at` rows it touches `ready` and waits, so
# the test can kill it there.
STAGE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from stages.core.io import atomic_folder, output_set, write_json, write_text
    from stages.core.live_log import TrainingLive

    root, episodes, pause_at, phase = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with output_set():
        live = TrainingLive(root / "data/dvclive", "episode")
        for episode in range(episodes):
            live.log(episode, **{"return": float(episode)})
            if phase == "training" and episode + 1 == pause_at:
                (root / "ready").touch()
                time.sleep(600)
        live.close()
        with atomic_folder(root / "data/policies/algo_s42") as folder:
            (folder / "model.keras").write_text(f"model of {episodes} episodes")
        write_text(root / "reports/run.gif", f"gif of {episodes} episodes")
        write_json(root / "reports/metrics.json", {"episodes": episodes})
        if phase == "writing":
            (root / "ready").touch()
            time.sleep(600)
""")


def run_stage_copy(root: Path, episodes: int, pause_at: int = 0, phase: str = "none") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", STAGE, str(root), str(episodes), str(pause_at), phase],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def outputs_of(root: Path) -> dict[str, str]:
    """What a reader sees: every file of the set (DVCLive's included), by path."""
    files = [root / "reports/metrics.json", root / "reports/run.gif",
             *sorted((root / "data/policies").rglob("*")), *sorted((root / "data/dvclive").rglob("*"))]
    return {str(f.relative_to(root)): f.read_text() for f in files
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts)}


def kill_when_ready(root: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not (root / "ready").exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "the stage never got to the kill point"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (root / "ready").unlink()


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*tmp-*"))


@pytest.mark.parametrize("phase", ["training", "writing"])
def test_a_killed_stage_leaves_the_previous_set_whole_and_the_next_run_removes_its_leftovers(tmp_path, phase):
    first = run_stage_copy(tmp_path, 30)
    assert first.wait() == 0, first.stdout.read()
    previous = outputs_of(tmp_path)
    assert previous["reports/metrics.json"] == '{\n  "episodes": 30\n}\n'
    assert len(read_history(tmp_path / "data/dvclive")) == 30

    # Killed 10 episodes into training, or after every output is written but before the set is
    # committed: either way nothing of the killed run is in place.
    killed = run_stage_copy(tmp_path, 40, pause_at=10, phase=phase)
    kill_when_ready(tmp_path, killed)
    assert outputs_of(tmp_path) == previous
    left = leftovers(tmp_path)
    assert f"data/.dvclive.tmp-{killed.pid}" in left
    if phase == "writing":
        assert f"data/policies/.algo_s42.tmp-{killed.pid}" in left
        assert f"reports/.run.tmp-{killed.pid}.gif" in left

    again = run_stage_copy(tmp_path, 20)
    assert again.wait() == 0, again.stdout.read()
    assert leftovers(tmp_path) == []
    assert json.loads((tmp_path / "reports/metrics.json").read_text()) == {"episodes": 20}
    assert len(read_history(tmp_path / "data/dvclive")) == 20
    assert (tmp_path / "data/policies/algo_s42/model.keras").read_text() == "model of 20 episodes"
    assert sorted(p.name for p in (tmp_path / "data/policies").iterdir()) == ["algo_s42"]


def test_a_failing_stage_replaces_nothing_and_leaves_no_temporary_file(tmp_path):
    write_json(tmp_path / "metrics.json", {"old": 1})
    with atomic_folder(tmp_path / "policy") as folder:
        (folder / "model").write_text("old")
    with pytest.raises(RuntimeError), output_set():
        write_json(tmp_path / "metrics.json", {"new": 1})
        with atomic_folder(tmp_path / "policy") as folder:
            (folder / "model").write_text("new")
        log = TrainingLive(tmp_path / "dvclive", "iteration")
        log.log(1, loss=0.5)
        log.close()
        TrainingLive(tmp_path / "more", "iteration").log(1, loss=0.5)  # left open by the failure
        raise RuntimeError("the stage fails after writing")
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"old": 1}
    assert (tmp_path / "policy/model").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "policy"]


def test_outputs_wait_in_the_set_where_the_stage_can_read_them_back(tmp_path):
    target, folder = tmp_path / "metrics.json", tmp_path / "policy"
    with output_set():
        write_text(target, "new")
        with atomic_folder(folder) as temporary:
            (temporary / "model").write_text("weights")
            write_json(temporary / "manifest.json", {"files": 1})  # part of the folder: at once
            assert json.loads((temporary / "manifest.json").read_text()) == {"files": 1}
        assert not target.exists() and not folder.exists()
        assert staged(target) == temporary_name(target) and staged(target).read_text() == "new"
        assert (staged(folder) / "model").read_text() == "weights"
        live = TrainingLive(tmp_path / "dvclive", "iteration")
        assert live.live_folder == tmp_path / f".dvclive.tmp-{os.getpid()}"
        live.log(1, loss=0.5)
        assert json.loads((live.live_folder / "metrics.json").read_text())["loss"] == 0.5  # watchable
        live.close()
        assert not (tmp_path / "dvclive").exists()
    assert target.read_text() == "new" and (folder / "model").read_text() == "weights"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model"]
    assert staged(target) == target
    assert len(read_history(tmp_path / "dvclive")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvclive", "metrics.json", "policy"]


def test_only_leftovers_of_processes_no_longer_running_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        target = tmp_path / "run.gif"
        target.write_text("gif")
        for pid in (dead.pid, alive.pid):
            temporary_name(target, pid).write_text("half a gif")
            temporary_name(tmp_path / "policy", pid, folder=True).mkdir()
            (tmp_path / f".policy.old-{pid}").mkdir()
            (tmp_path / f"..policy.tmp-{pid}.tmp-{dead.pid}").mkdir()  # a child process's export
        (tmp_path / ".run.tmp-notapid.gif").write_text("not ours")
        (tmp_path / ".other.tmp-1.gif").write_text("another output's")
        removed = remove_leftovers(target) + remove_leftovers(tmp_path / "policy")
        assert sorted(p.name for p in removed) == sorted(
            [f".run.tmp-{dead.pid}.gif", f".policy.tmp-{dead.pid}", f".policy.old-{dead.pid}",
             f"..policy.tmp-{dead.pid}.tmp-{dead.pid}"])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["run.gif", f".run.tmp-{alive.pid}.gif", f".policy.tmp-{alive.pid}", f".policy.old-{alive.pid}",
             f"..policy.tmp-{alive.pid}.tmp-{dead.pid}",
             ".run.tmp-notapid.gif", ".other.tmp-1.gif"])
    finally:
        alive.kill()
        alive.wait()


def test_timings_are_written_apart_and_read_only_where_present(tmp_path):
    assert read_timings("dqn@dqn-42", tmp_path) is None
    write_timings("dqn@dqn-42", {"training": {"wall_time_s": 1.5}}, tmp_path)
    assert read_timings("dqn@dqn-42", tmp_path) == {"training": {"wall_time_s": 1.5}}
    (tmp_path / "broken.json").write_text("{")
    assert read_timings("broken", tmp_path) is None


def test_an_archive_of_a_folder_waiting_in_the_set_packs_what_this_run_wrote(tmp_path):
    with atomic_folder(tmp_path / "pi_bundle") as folder:
        (folder / "manifest.json").write_text("old")
    with output_set():
        with atomic_folder(tmp_path / "pi_bundle") as folder:
            (folder / "manifest.json").write_text("new")
        write_reproducible_tar_gz(tmp_path / "pi_bundle", tmp_path / "pi_bundle.tar.gz")
    with tarfile.open(tmp_path / "pi_bundle.tar.gz") as archive:
        assert archive.getnames() == ["pi_bundle", "pi_bundle/manifest.json"]
        assert archive.extractfile("pi_bundle/manifest.json").read() == b"new"


def test_dvc_ignores_outputs_being_written_and_leftovers_but_not_a_live_training_log(repo_root):
    """Not a dependency's content: a killed run's policy folder in data/policies does not put the
    consumers out of date before the next run removes it. A live log stays visible to DVC."""
    dvc = [sys.executable, "-m", "dvc", "check-ignore"]
    ignored = ["data/policies/.dqn_s42.tmp-123", "data/policies/.dqn_s42.old-123",
               "reports/dqn/dqn/s42/.dqn.tmp-123.gif", "reports/evaluate/.metrics.tmp-123.json"]
    found = subprocess.run([*dvc, *ignored], cwd=repo_root, capture_output=True, text=True)
    assert found.returncode == 0 and found.stdout.split() == ignored, found
    kept = ["data/dqn/dqn/s42/.dvclive.tmp-123", "data/policies/dqn_s42", "reports/dqn/dqn/s42/dqn.gif"]
    found = subprocess.run([*dvc, *kept], cwd=repo_root, capture_output=True, text=True)
    assert found.returncode == 1 and found.stdout == "", found
