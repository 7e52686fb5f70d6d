"""Shared machinery: atomic writes, seeding, GIFs, the evaluation helper."""

import json

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from stages.policies.cartpole import basic_policy
from stages.policies.evaluation import evaluate_policy
from stages.core.frames import record_episode, write_gif
from stages.core.io import atomic_path, write_json
from stages.core.seeding import seed_everything


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"old": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"new": ')
            raise RuntimeError("crash halfway")
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_json_is_byte_stable_and_refuses_nan(tmp_path):
    write_json(tmp_path / "a.json", {"x": np.float64(0.1), "y": np.arange(3)})
    write_json(tmp_path / "b.json", {"x": 0.1, "y": [0, 1, 2]})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    with pytest.raises(ValueError):
        write_json(tmp_path / "c.json", {"x": float("nan")})
    assert not (tmp_path / "c.json").exists()


def test_seed_everything_repeats_draws():
    first = seed_everything(7).normal(size=3), np.random.rand()
    second = seed_everything(7).normal(size=3), np.random.rand()
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]


def sequential_returns(env_id, seeds, max_steps):
    """The plain one-episode-at-a-time loop the batched helper must agree with."""
    env = gym.make(env_id, max_episode_steps=max_steps)
    returns = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(basic_policy(obs)))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return returns


def test_evaluation_matches_one_episode_at_a_time():
    seeds = list(range(100, 137))
    result = evaluate_policy("CartPole-v1", basic_policy, seeds, max_steps=200, batch_size=8,
                             progress=False)
    expected = sequential_returns("CartPole-v1", seeds, 200)
    np.testing.assert_array_equal(result.returns, expected)
    assert result.summary() == {
        "episodes": 37, "mean": pytest.approx(np.mean(expected)), "std": pytest.approx(np.std(expected)),
        "min": min(expected), "max": max(expected), "mean_length": pytest.approx(np.mean(expected)),
    }


def test_evaluation_respects_the_step_cap():
    always_right_when_balanced = lambda obs: np.where(obs[:, 3] < 0, 0, 1)  # noqa: E731 (angular velocity rule)
    result = evaluate_policy("CartPole-v1", always_right_when_balanced, [0, 1, 2], max_steps=30,
                             progress=False)
    assert result.max <= 30
    assert np.all(result.lengths <= 30)


def test_gif_round_trip(tmp_path):
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    episode = record_episode(env, lambda obs: int(basic_policy(obs)), seed=3, max_steps=15)
    env.close()
    assert episode.frames[0].shape == (400, 600, 3)
    assert len(episode.frames) == episode.steps + 1
    write_gif(tmp_path / "episode.gif", episode.frames, fps=25)
    with Image.open(tmp_path / "episode.gif") as gif:
        assert gif.size == (600, 400)
        # Pillow merges identical consecutive frames and adds up their durations.
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert sum(durations) == 40 * len(episode.frames)


def test_a_training_log_is_a_dvclive_folder_and_nothing_else(tmp_path):
    """Inside a git repository without DVC (where DVCLive would otherwise run `dvc init`), the log
    writes its folder only: metrics.json and one .tsv per metric, without timestamps or wall time."""
    import subprocess

    import pandas as pd

    from stages.core.live_log import TrainingLive, read_history

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    rows = [{"iteration": 10, "mean_return": float("nan"), "loss": 0.5, "episodes": 0, "wall_time_s": 1.0},
            {"iteration": 20, "mean_return": 12.25, "loss": 0.25, "episodes": 3, "wall_time_s": 2.0}]
    live = TrainingLive(tmp_path / "run/dvclive", "iteration")
    for row in rows:
        live.log(row["iteration"], **row)
    live.close()
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert files == ["run/dvclive/metrics.json", *(f"run/dvclive/plots/metrics/{m}.tsv"
                                                  for m in ("episodes", "loss", "mean_return"))]
    tsv = pd.read_csv(tmp_path / "run/dvclive/plots/metrics/mean_return.tsv", sep="\t")
    assert list(tsv.columns) == ["step", "mean_return"] and tsv["step"].tolist() == [10, 20]
    summary = json.loads((tmp_path / "run/dvclive/metrics.json").read_text())
    assert summary == {"mean_return": 12.25, "loss": 0.25, "episodes": 3, "step": 20, "step_name": "iteration"}
    history = read_history(tmp_path / "run/dvclive")
    assert list(history.columns) == ["iteration", "episodes", "loss", "mean_return"]
    assert history["mean_return"].isna().tolist() == [True, False]
    with pytest.raises(ValueError, match="steps must increase"):
        live.log(20, loss=1.0)

    # A resumed run logs the checkpoint's rows again, then goes on: the same bytes as one run.
    resumed = TrainingLive(tmp_path / "resumed/dvclive", "iteration", history=rows[:1])
    resumed.log(20, **rows[1])
    resumed.close()
    for file in ("metrics.json", "plots/metrics/loss.tsv", "plots/metrics/mean_return.tsv"):
        assert (tmp_path / "resumed/dvclive" / file).read_bytes() == (tmp_path / "run/dvclive" / file).read_bytes()


def test_train_summaries_hold_tf_agents_tags_against_both_steps(tmp_path):
    import tensorflow as tf
    from tf_agents.metrics import tf_metrics

    from stages.tf_agents_kit.summaries import STEPS_PER_SECOND, TrainSummaries, read_scalars

    step = tf.Variable(0, dtype=tf.int64)
    metrics = [tf_metrics.NumberOfEpisodes(), tf_metrics.EnvironmentSteps(),
               tf_metrics.AverageReturnMetric(), tf_metrics.AverageEpisodeLengthMetric()]
    summaries = TrainSummaries(tmp_path / "tensorboard", step, metrics, interval=2, fresh=True)
    with summaries.recording():
        for _ in range(4):
            tf.summary.scalar("Losses/loss", 1.5, step=step)  # as agent.train writes it
            step.assign_add(1)
        summaries.write(steps_per_second=3.0)
    summaries.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    for name in ("NumberOfEpisodes", "EnvironmentSteps", "AverageReturn", "AverageEpisodeLength"):
        assert scalars[f"Metrics/{name}"] == [(4, 0.0)]
    assert "Metrics_vs_EnvironmentSteps/AverageReturn" in scalars
    assert "Metrics_vs_NumberOfEpisodes/AverageEpisodeLength" in scalars
    assert [s for s, _ in scalars["Losses/loss"]] == [0, 2]  # every interval only
    assert scalars[STEPS_PER_SECOND] == [(4, 3.0)]
