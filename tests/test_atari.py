"""Atari preprocessing, start rules, resumable checkpoints, and the Atari stage end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pi.policy_contract import (
    AtariSetupError,
    area_taps,
    check_game,
    make_atari_env,
    preprocessing_description,
    shrink,
)
from stages.atari_dqn.checkpoints import HOLD_ENV, CheckpointError, TrainingCheckpoint, restore_trackables
from stages.core.settings import ParamError
from pipeline.validation import validate_pipeline
from pipeline.workspace import engine_env
from stages.core.live_log import read_history
from stages.tf_agents_kit.summaries import STEPS_PER_SECOND, read_scalars
from tests.conftest import dvclive_history, edited_params, file_digests, repo_stages, run
from tests.test_dag import dvc_view

BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "--cores", "2"]
DVC = str(BIN / "dvc")
GAMES = ("breakout", "space_invaders")


def rules(after_reset=("FIRE", 1), after_life_loss=("FIRE", 1), max_episode_steps=27000) -> dict:
    return preprocessing_description(
        frame_skip=4, screen_size=84, noop_max=30, frame_stack=4, max_episode_steps=max_episode_steps,
        after_reset={"action": after_reset[0], "steps": after_reset[1]},
        after_life_loss={"action": after_life_loss[0], "steps": after_life_loss[1]})


# --- preprocessing ----------------------------------------------------------------------------


def test_area_resize_averages_what_lies_under_each_pixel():
    # 5 -> 2: each output pixel covers 2.5 source pixels.
    index, weight = area_taps(5, 2)
    dense = np.zeros((2, 5))
    np.put_along_axis(dense, index, weight, axis=1)
    np.testing.assert_allclose(dense, [[0.4, 0.4, 0.2, 0, 0], [0, 0, 0.2, 0.4, 0.4]])
    frame = np.full((210, 160), 77, np.uint8)
    assert np.all(shrink(frame, area_taps(210, 84), area_taps(160, 84)) == 77)
    frame = np.random.default_rng(0).integers(0, 256, (210, 160)).astype(np.uint8)
    small = shrink(frame, area_taps(210, 84), area_taps(160, 84))
    assert small.shape == (84, 84) and abs(float(small.mean()) - float(frame.mean())) < 0.5


def test_observations_stack_the_last_four_frames_newest_last():
    env = make_atari_env("BreakoutNoFrameskip-v4", rules())
    first, _ = env.reset(seed=0)
    assert first.shape == (84, 84, 4) and first.dtype == np.uint8
    second, *_ = env.step(0)
    np.testing.assert_array_equal(second[..., :-1], first[..., 1:])


def noop_episode_length(env, limit: int) -> tuple[int, bool]:
    env.reset(seed=1)
    for step in range(1, limit + 1):
        _, _, terminated, truncated, _ = env.step(0)
        if terminated or truncated:
            return step, terminated
    return limit, False


def test_breakout_presses_fire_at_reset_and_after_each_lost_life():
    # With FIRE pressed for it, an agent that does nothing loses its 5 balls quickly ...
    steps, terminated = noop_episode_length(make_atari_env("BreakoutNoFrameskip-v4", rules()), 2000)
    assert terminated and steps < 1000
    # ... without it the ball never leaves and the game never ends.
    steps, terminated = noop_episode_length(
        make_atari_env("BreakoutNoFrameskip-v4", rules(("NOOP", 0), ("NOOP", 0))), 1000)
    assert not terminated and steps == 1000


def action_matters(env) -> bool:
    """Would FIRE now (then 3 no-ops) leave the console in another state than 4 no-ops?"""
    ale = env.unwrapped.ale
    saved = ale.cloneState()
    outcomes = []
    for first in (0, 1):
        for action in (first, 0, 0, 0):
            for _ in range(4):
                ale.act(action)
        outcomes.append(ale.getRAM().copy())
        ale.restoreState(saved)
    return not np.array_equal(*outcomes)


def idle_steps(env) -> int:
    """Agent steps (of no-ops) before the agent's input has any effect."""
    steps = 0
    while not action_matters(env):
        env.step(0)
        steps += 1
    return steps


def idle_steps_after_a_lost_life(env, seed: int) -> int:
    env.action_space.seed(seed)
    lives = env.unwrapped.ale.lives()
    while env.unwrapped.ale.lives() == lives:
        env.step(env.action_space.sample())
    return idle_steps(env)


def test_space_invaders_skips_the_idle_steps():
    plain = make_atari_env("SpaceInvadersNoFrameskip-v4", rules(("NOOP", 0), ("NOOP", 0)))
    skipping = make_atari_env("SpaceInvadersNoFrameskip-v4", rules(("NOOP", 24), ("NOOP", 15)))
    for seed in (3, 4):
        plain.reset(seed=seed)
        skipping.reset(seed=seed)  # the same no-ops at the start, then 24 forced ones
        at_start = idle_steps(plain)
        assert at_start >= 24 and idle_steps(skipping) == at_start - 24  # the cannon blinks at the start ...
        assert idle_steps_after_a_lost_life(plain, seed) == 15  # ... and after each lost life
        assert idle_steps_after_a_lost_life(skipping, seed) == 0


def test_unknown_games_missing_roms_and_absent_actions_are_named(monkeypatch):
    with pytest.raises(AtariSetupError, match="unknown Atari game id 'Breakout-v99'"):
        check_game("Breakout-v99")
    with pytest.raises(AtariSetupError, match="has no action 'UP'"):
        check_game("SpaceInvadersNoFrameskip-v4", ["UP"])
    import ale_py.roms

    monkeypatch.setattr(ale_py.roms, "get_rom_path", lambda game: None)
    with pytest.raises(AtariSetupError, match="the ROM of 'breakout'.*is missing"):
        check_game("BreakoutNoFrameskip-v4")


def test_bad_atari_settings_fail_before_any_work(tmp_path):
    def forced(params):
        params["atari_dqn"]["games"]["space_invaders"]["after_reset"]["action"] = "UP"

    with pytest.raises(ParamError, match="atari_dqn.games.space_invaders is not allowed: "
                                         "SpaceInvadersNoFrameskip-v4 has no action 'UP'"):
        validate_pipeline(repo_stages(), edited_params(tmp_path, forced))

    def unseen(params):
        params["atari_dqn"]["evaluation"]["seed_start"] = params["atari_dqn"]["training"]["seed"]

    with pytest.raises(ParamError, match="evaluation seeds .* must not include training.seed"):
        validate_pipeline(repo_stages(), edited_params(tmp_path, unseen))


def test_a_buffer_that_does_not_fit_is_refused():
    from stages.atari_dqn.agent import check_buffer_fits

    frame_stack_bytes = 84 * 84 * 4 + 32
    with pytest.raises(ParamError, match=r"replay_buffer_capacity = 1000000000 is not allowed: the buffer needs"):
        check_buffer_fits(frame_stack_bytes * 10**9, 10**9)
    check_buffer_fits(frame_stack_bytes * 1000, 1000)


# --- resumable checkpoints ----------------------------------------------------------------------


class Run:
    """One training run's view of a checkpoint folder: a train step and one weight to restore."""

    def __init__(self, folder: Path, settings=None, iterations: int = 100):
        import tensorflow as tf

        self.checkpoint = TrainingCheckpoint(folder, settings or {"lr": 1}, iterations)
        self.step, self.weight = tf.Variable(0, dtype=tf.int64), tf.Variable(0.0)
        self.start, self.log = self.checkpoint.restore(self.step, weight=self.weight)

    def save_at(self, iteration: int) -> None:
        self.step.assign(iteration)
        self.weight.assign(iteration / 10)  # each checkpoint holds its own value
        rows = [{"iteration": i, "loss": 1 / i, "wall_time_s": 0.1 * i} for i in range(10, iteration + 1, 10)]
        self.checkpoint.save(pd.DataFrame(rows))

    @property
    def messages(self) -> str:
        return "\n".join(self.checkpoint.notes + [self.checkpoint.reset_reason or ""])


def published(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "damaged")


def test_checkpoints_resume_reset_when_stale_and_carry_no_timestamps(tmp_path):
    folder = tmp_path / "checkpoints"
    first = Run(folder)
    assert (first.start, first.log, first.checkpoint.notes) == (0, None, [])
    first.save_at(30)
    first.save_at(60)
    assert published(folder) == ["iteration-60"]  # only the newest is kept
    manifest = (folder / "iteration-60/checkpoint.json").read_text()
    assert "time" not in manifest.replace("wall_time_s", "")

    resumed = Run(folder)
    assert (resumed.start, float(resumed.weight.numpy())) == (60, 6.0)
    assert resumed.log["iteration"].tolist() == [10, 20, 30, 40, 50, 60]
    assert resumed.log["loss"].tolist() == [1 / i for i in range(10, 61, 10)]  # floats exact
    resumed.save_at(90)  # the next checkpoint replaces the one the run started from
    assert published(folder) == ["iteration-90"]

    # Two identical runs write the same bytes.
    other = Run(tmp_path / "again")
    other.save_at(30)
    other.save_at(60)
    other.save_at(90)
    for name in ("checkpoint.json", "ckpt.index", "ckpt.data-00000-of-00001"):
        assert (folder / "iteration-90" / name).read_bytes() == (tmp_path / "again/iteration-90" / name).read_bytes()

    stale = Run(folder, {"lr": 2})
    assert stale.start == 0 and "other settings (lr)" in stale.checkpoint.reset_reason
    assert published(folder) == []


def test_a_checkpoint_beyond_the_asked_iterations_starts_over(tmp_path):
    Run(tmp_path).save_at(80)
    again = Run(tmp_path, iterations=50)
    assert "iteration 80, beyond the 50" in again.checkpoint.reset_reason and again.start == 0


def two_checkpoints(folder: Path) -> None:
    """Checkpoints at 30 and 60, as a kill between publishing 60 and deleting 30 leaves them."""
    run = Run(folder)
    run.save_at(30)
    shutil.copytree(folder / "iteration-30", folder.parent / "kept-30")
    run.save_at(60)
    shutil.move(folder.parent / "kept-30", folder / "iteration-30")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def unreadable_index_with_a_matching_digest(checkpoint: Path) -> None:
    import hashlib

    index = checkpoint / "ckpt.index"
    truncate(index)
    manifest_file = checkpoint / "checkpoint.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["files"]["ckpt.index"] = {"bytes": index.stat().st_size,
                                       "sha256": hashlib.sha256(index.read_bytes()).hexdigest()}
    manifest_file.write_text(json.dumps(manifest))


DAMAGE = {
    "truncated data": (lambda c: truncate(c / "ckpt.data-00000-of-00001"),
                       "ckpt.data-00000-of-00001 has .* bytes where the manifest says"),
    "truncated index": (lambda c: truncate(c / "ckpt.index"), "ckpt.index has .* bytes"),
    "truncated manifest": (lambda c: truncate(c / "checkpoint.json"),
                           "its manifest checkpoint.json is unreadable \\(JSONDecodeError"),
    "missing manifest": (lambda c: (c / "checkpoint.json").unlink(), "its manifest checkpoint.json is missing"),
    "missing data": (lambda c: (c / "ckpt.data-00000-of-00001").unlink(), "ckpt.data-00000-of-00001 is missing"),
    "flipped byte": (lambda c: flip_a_byte(c / "ckpt.data-00000-of-00001"), "ckpt.data-00000-of-00001 does not match the sha256"),
    "unreadable index": (unreadable_index_with_a_matching_digest, "TensorFlow cannot read it"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_checkpoint_is_named_set_aside_and_the_one_before_it_resumed(tmp_path, kind):
    folder = tmp_path / "checkpoints"
    two_checkpoints(folder)
    damage, problem = DAMAGE[kind]
    damage(folder / "iteration-60")

    run = Run(folder)
    assert re.search(f"set aside {re.escape(str(folder / 'iteration-60'))}: a damaged checkpoint: {problem}",
                     run.messages), run.messages
    assert str(folder / "damaged/iteration-60") in run.messages
    assert (run.start, float(run.weight.numpy())) == (30, 3.0)
    assert run.log["iteration"].tolist() == [10, 20, 30]
    assert published(folder) == ["iteration-30"] and os.listdir(folder / "damaged") == ["iteration-60"]

    # With no good checkpoint left, the run starts over and says why; the export refuses.
    damage(folder / "iteration-30")
    with pytest.raises(CheckpointError, match=f"the checkpoint {re.escape(str(folder / 'iteration-30'))} "
                                              f"is damaged: {problem}"):
        restore_trackables(folder, global_step=tf_step())
    fresh = Run(folder)
    assert fresh.start == 0 and float(fresh.weight.numpy()) == 0.0
    assert f"no complete checkpoint is left in {folder}" in fresh.checkpoint.reset_reason
    # Only the latest set-aside is kept, and the message says the earlier one was deleted.
    assert os.listdir(folder / "damaged") == ["iteration-30"]
    assert f"deleted what an earlier run set aside in {folder / 'damaged'}" in fresh.messages


def tf_step():
    import tensorflow as tf

    return tf.Variable(0, dtype=tf.int64)


def test_a_kill_while_writing_leaves_a_folder_that_is_set_aside(tmp_path):
    folder = tmp_path / "checkpoints"
    run = Run(folder)
    run.save_at(30)
    # What a kill in the middle of the next save leaves: TensorFlow's files half written in the
    # temporary folder (and TensorFlow's own temporary folder inside it), no manifest.
    writing = folder / "iteration-60.writing"
    (writing / "ckpt_temp").mkdir(parents=True)
    (writing / "ckpt_temp/part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 100)
    shutil.copy(folder / "iteration-30/ckpt.index", writing / "ckpt.index")

    resumed = Run(folder)
    assert f"set aside {writing}: an unfinished checkpoint" in resumed.messages
    assert (resumed.start, float(resumed.weight.numpy())) == (30, 3.0)
    assert published(folder) == ["iteration-30"] and os.listdir(folder / "damaged") == ["iteration-60.writing"]
    resumed.save_at(60)  # and the run goes on
    assert published(folder) == ["iteration-60"] and Run(folder).start == 60


def test_an_intact_checkpoint_of_other_objects_is_a_named_error(tmp_path):
    import tensorflow as tf

    Run(tmp_path).save_at(30)
    checkpoint = TrainingCheckpoint(tmp_path, {"lr": 1}, 100)
    with pytest.raises(CheckpointError, match=f"the checkpoint {re.escape(str(tmp_path / 'iteration-30'))} is "
                                              f"intact but does not fit .* delete {re.escape(str(tmp_path))} to"):
        checkpoint.restore(tf_step(), weight=tf.Variable(0.0), bias=tf.Variable(0.0))


def test_files_of_the_earlier_layout_are_set_aside_and_training_starts_over(tmp_path):
    # The layout before manifests: TensorFlow's CheckpointManager files (with the _temp folder a
    # kill left), the settings and the log beside them.
    folder = tmp_path / "checkpoints"
    (folder / "tf/ckpt-60_temp").mkdir(parents=True)
    (folder / "tf/checkpoint").write_text('model_checkpoint_path: "ckpt-30"\n')
    (folder / "settings.json").write_text('{"lr": 1}')
    run = Run(folder)
    assert run.start == 0 and f"no complete checkpoint is left in {folder}" in run.checkpoint.reset_reason
    for name in ("tf", "settings.json"):
        assert f"set aside {folder / name}: not part of a checkpoint of this layout" in run.messages
    assert sorted(os.listdir(folder / "damaged")) == ["settings.json", "tf"]


# --- the stage end to end -----------------------------------------------------------------------


def atari_outputs(workspace: Path, game: str) -> list[str]:
    return dvc_view(workspace)[f"atari_dqn@{game}"]["outs"]


def edit_params(workspace: Path, edit) -> None:
    path = workspace / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params["atari_dqn"])
    path.write_text(yaml.safe_dump(params, sort_keys=False, default_flow_style=None))


@pytest.mark.e2e
def test_both_games_run_end_to_end_in_the_quick_profile(clone_of_quick_run):
    """The quick run trained every game (Snakemake, then recorded in dvc.lock); a copy of it is
    checked here, and one game is forced to run again."""
    ws = clone_of_quick_run()
    cfg = yaml.safe_load((ws / "params.yaml").read_text())["atari_dqn"]
    assert set(cfg["games"]) == set(GAMES)
    targets = [f"reports/atari_dqn/{game}/metrics.json" for game in GAMES]
    from PIL import Image

    for game in GAMES:
        for output in atari_outputs(ws, game):
            assert (ws / output).exists(), output
        reports = ws / "reports/atari_dqn" / game
        for picture in (f"{game}_plot", f"preprocessed_{game}_plot", "sub_episodes_plot", "learning_curve"):
            assert Image.open(reports / f"{picture}.png").size[0] > 100
        with Image.open(reports / "trained_agent.gif") as gif:
            # Pillow merges repeated frames into one longer frame: count the time instead.
            durations = [gif.seek(i) or gif.info["duration"] for i in range(gif.n_frames)]
            assert gif.n_frames > 1
            assert sum(durations) == cfg["pictures"]["gif_frames"] * round(1000 / cfg["pictures"]["gif_fps"])
        metrics = json.loads((reports / "metrics.json").read_text())
        assert metrics["training"]["iterations"] == cfg["training"]["iterations"]
        assert metrics["training"]["environment_steps"] == 4 * cfg["training"]["iterations"]
        for policy in ("greedy_policy", "random_policy"):
            assert metrics["evaluation"][policy]["episodes"] == cfg["evaluation"]["episodes"]
        entry = json.loads((ws / f"data/policies/{game}_dqn/policy.json").read_text())
        assert entry["output"] == "tf_agents_policy" and entry["observation_shape"] == [84, 84, 4]
        assert entry["preprocessing"]["frame_stack"] == 4
        dvclive_history(ws / f"data/atari_dqn/{game}/dvclive", "iteration",
                        {"episodes", "environment_steps", "average_return", "average_episode_length", "loss",
                         "epsilon"})
        scalars = read_scalars(ws / f"data/atari_dqn/{game}/tensorboard")
        assert {"Metrics/AverageReturn", "Metrics_vs_EnvironmentSteps/AverageReturn",
                "Losses/total_loss", STEPS_PER_SECOND} <= set(scalars)
    status = run([DVC, "status", "--json", *(f"atari_dqn@{game}" for game in GAMES)], ws).stdout
    assert json.loads(status or "{}") == {}

    # A finished run's checkpoint is kept; forcing the stage again re-exports the same bytes.
    before = file_digests(ws, atari_outputs(ws, "breakout"))
    # The target goes before --forcerun, which takes every word after it (a target placed there
    # would be read as one more rule to force, and Snakemake would build its default target).
    forced = run([*SNAKEMAKE, targets[0], "--forcerun", "atari_dqn_breakout"], ws)
    assert file_digests(ws, atari_outputs(ws, "breakout")) == before
    assert "1 of 1 steps (100%) done" in forced.stdout + forced.stderr, "a consumer ran too"


def stage_process_group(command: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    from pipeline.workspace import engine_env

    return subprocess.Popen(command, cwd=cwd, env=engine_env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.e2e
def test_a_killed_run_resumes_from_its_last_checkpoint(quick_workspace):
    ws = quick_workspace("resume")
    edit_params(ws, lambda p: p["training"].update(iterations=150, checkpoint_interval=30, log_interval=10))
    checkpoints = ws / "data/atari_dqn/breakout/checkpoints"

    # Snakemake runs the stage; both are killed at once after the first checkpoint (a crash).
    target = "reports/atari_dqn/breakout/metrics.json"
    job = stage_process_group([*SNAKEMAKE, target], ws, ws / "first.log")
    deadline = time.monotonic() + 300
    while not any(p.name.split("-")[1].isdigit() for p in checkpoints.glob("iteration-*")):  # published
        assert job.poll() is None and time.monotonic() < deadline, (ws / "first.log").read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (ws / target).exists()
    # The killed run's log never replaced dvclive/ (empty: Snakemake made its folders before the
    # job); it stayed where it was written.
    assert not (ws / "data/atari_dqn/breakout/dvclive/metrics.json").exists()
    [written] = (ws / "data/atari_dqn/breakout").glob(".dvclive.tmp-*")
    killed = read_history(written)  # rows up to the kill

    # Started again, Snakemake leaves the checkpoint alone and the stage continues from it.
    run([*SNAKEMAKE, "--unlock"], ws)  # the killed Snakemake left its lock behind
    log = run([*SNAKEMAKE, "--rerun-incomplete", target], ws)
    text = (ws / "logs/atari_dqn@breakout.log").read_text()
    resumed_at = int(text.split("resuming from the checkpoint at iteration ")[1].split()[0])
    assert 30 <= resumed_at < 150, log.stdout
    live = ws / "data/atari_dqn/breakout/dvclive"
    training_log = dvclive_history(live, "iteration", {"environment_steps", "average_return", "loss"})
    assert training_log["iteration"].tolist() == list(range(10, 151, 10))
    # The metrics came back with the agent: 4 environment steps per iteration, none counted twice.
    assert training_log["environment_steps"].tolist() == [4 * i for i in range(10, 151, 10)]
    # Up to the checkpoint the history is what the killed run logged; its rows after the
    # checkpoint are gone (logged again by the resumed run, not twice).
    before = killed[killed["iteration"] <= resumed_at].reset_index(drop=True)
    assert before.equals(training_log[training_log["iteration"] <= resumed_at].reset_index(drop=True))
    assert not written.exists()  # the killed run's leftover, removed by the run that finished

    # DVC keeps it too (persist): asking for more iterations continues the finished run.
    edit_params(ws, lambda p: p["training"].update(iterations=170))
    repro = run([DVC, "repro", "atari_dqn@breakout"], ws).stdout
    assert "resuming from the checkpoint at iteration 150 of 170" in repro
    assert dvclive_history(live, "iteration", {"loss"})["iteration"].iloc[-1] == 170


@pytest.mark.e2e
def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_one_before(quick_workspace):
    """The issue's reproduction: DVC runs the stage on an empty checkpoint folder and the stage is
    killed while it writes its second checkpoint; DVC, started again, finishes the run."""
    ws = quick_workspace("killed-writing")
    edit_params(ws, lambda p: p["training"].update(iterations=90, checkpoint_interval=30, log_interval=10))
    checkpoints = Path("data/atari_dqn/breakout/checkpoints")  # as the stage names it
    writing = checkpoints / "iteration-60.writing"

    # The test hook holds the write of iteration 60 after TensorFlow's files (stages/atari_dqn/checkpoints.py).
    first = ws / "first.log"
    job = subprocess.Popen([DVC, "repro", "-f", "-s", "atari_dqn@breakout"], cwd=ws,
                           env={**engine_env(), HOLD_ENV: "60"}, stdout=first.open("w"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while f"holding the checkpoint {writing}" not in first.read_text():
        assert job.poll() is None and time.monotonic() < deadline, first.read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert {p.name for p in (ws / writing).iterdir()} >= {"ckpt.index"}  # a write cut short
    assert not (ws / writing / "checkpoint.json").exists()
    assert sorted(os.listdir(ws / checkpoints)) == ["iteration-30", "iteration-60.writing"]

    rerun = run([DVC, "repro", "-s", "atari_dqn@breakout"], ws).stdout
    assert f"set aside {writing}: an unfinished checkpoint" in rerun, rerun
    assert f"resuming from the checkpoint at iteration 30 of 90 ({checkpoints / 'iteration-30'})" in rerun
    # Only the newest checkpoint is kept, beside what was set aside.
    assert sorted(os.listdir(ws / checkpoints)) == ["damaged", "iteration-90"]
    assert os.listdir(ws / checkpoints / "damaged") == ["iteration-60.writing"]
    history = dvclive_history(ws / "data/atari_dqn/breakout/dvclive", "iteration", {"environment_steps", "loss"})
    assert history["iteration"].tolist() == list(range(10, 91, 10))
    assert history["environment_steps"].tolist() == [4 * i for i in range(10, 91, 10)]
    metrics = json.loads((ws / "reports/atari_dqn/breakout/metrics.json").read_text())
    assert metrics["training"]["iterations"] == 90
    assert json.loads(run([DVC, "status", "--json", "atari_dqn@breakout"], ws).stdout or "{}") == {}


@pytest.mark.e2e
def test_a_buffer_too_big_for_memory_stops_the_stage_before_any_output(quick_workspace):
    ws = quick_workspace("too-big")
    edit_params(ws, lambda p: p["training"].update(replay_buffer_capacity=10**9))
    result = run(["python", "-m", "stages.atari_dqn", "--game", "space_invaders"], ws, check=False)
    assert result.returncode == 2
    assert "atari_dqn.training.replay_buffer_capacity = 1000000000 is not allowed" in result.stderr
    assert not (ws / "reports/atari_dqn").exists() and not (ws / "data/atari_dqn").exists()
