"""A TF-Agents DQN learns an Atari game (Breakout, Space Invaders) from pixels.

    python -m stages.atari_dqn --game breakout

The agent sees 84 x 84 grayscale frames, four stacked, through the project's Gymnasium-to-TF-Agents
adapter; the game's start rule (FIRE, or skipping the idle steps) is played for it. A random
policy fills the replay buffer first; then each iteration collects 4 steps with the
epsilon-greedy policy and trains on 64 pairs of consecutive steps. Training checkpoints every
``checkpoint_interval`` iterations and resumes from the last checkpoint when started again.
The greedy policy is exported (PolicySaver) and evaluated, through the export, against random
play on seeds that training never used.

    python -m stages.atari_dqn --game breakout --recipe drq_eps --seed 0

runs another recipe of params.yaml's ``atari_dqn.recipes`` (stages/atari_dqn/__init__.py; the
agent it builds is stages/atari_dqn/agent.py's), its folders and policy named
``<game>_<recipe>_s<seed>``. Without a recipe the agent is built exactly as the book's.

The training history is DVCLive's, in ``data/atari_dqn/<game>/dvclive``, one step per iteration
(a row every ``log_interval``): ``episodes``, ``environment_steps``, ``average_return``,
``average_episode_length`` (of the last 10 episodes), ``loss`` and ``epsilon``. A resumed run logs
the checkpoint's rows again first, so the folder is the same whether or not training was
interrupted. TensorBoard's view (``tensorboard --logdir data/atari_dqn``) is in
``data/atari_dqn/<game>/tensorboard``, outside DVC's outputs (stages/tf_agents_kit/summaries.py).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tf_agents.agents.dqn.dqn_agent import DqnAgent
from tf_agents.drivers.dynamic_step_driver import DynamicStepDriver
from tf_agents.environments.tf_py_environment import TFPyEnvironment
from tf_agents.eval.metric_utils import MetricsGroup
from tf_agents.policies.policy_saver import PolicySaver
from tf_agents.policies.random_tf_policy import RandomTFPolicy
from tf_agents.replay_buffers.tf_uniform_replay_buffer import TFUniformReplayBuffer
from tf_agents.trajectories.trajectory import Trajectory
from tf_agents.utils import common
from tqdm import tqdm

from pi.policy_contract import make_atari_env, preprocessing_description
from stages.atari_dqn import Settings, settings
from stages.atari_dqn.agent import (
    precision_of,
    augmented,
    build_agent,
    optimizer_name,
    buffer_bytes,
    check_buffer_fits,
    training_metrics,
)
from stages.atari_dqn.checkpoints import TrainingCheckpoint, restore_trackables
from stages.policies.evaluation import evaluate_policy
from stages.core.frames import record_episode, write_gif
from stages.core.io import adopt, staged, temporary_name, write_json
from stages.core.live_log import TrainingLive
from stages.core.plotting import new_figure, save_figure
from stages.policies.export import export_saved_policy
from stages.policies.index import PolicyEntry, load_policy, make_policy_env, read_entry
from stages.core.seeding import seed_everything
from stages.core.settings import Params, run_stage
from stages.tf_agents_kit.environment import GymnasiumPyEnvironment
from stages.tf_agents_kit.summaries import FOLDER as TENSORBOARD, TrainSummaries
from stages.core.timings import write_timings





@dataclass(frozen=True)
class Paths:
    game: str
    """The run's name (Settings.run): the game's for the book's recipe."""

    @property
    def data(self) -> Path:
        return Path("data/atari_dqn") / self.game

    @property
    def reports(self) -> Path:
        return Path("reports/atari_dqn") / self.game

    @property
    def policy(self) -> Path:
        return Path("data/policies") / f"{self.game}_dqn"


def stage_name(cfg: Settings) -> str:
    """The dvc.yaml stage that makes the run: atari_dqn@<game> for the book's recipe."""
    return f"atari_dqn@{cfg.name}" if cfg.recipe is None else f"atari_dqn_recipes@{cfg.run}"


def run_arguments(cfg: Settings) -> list[str]:
    """The command-line arguments that select this run (for the export's fresh interpreter)."""
    if cfg.recipe is None:
        return ["--game", cfg.name]
    return ["--game", cfg.name, "--recipe", cfg.recipe, "--seed", str(cfg.training.seed)]


# --- training ---------------------------------------------------------------------------------


def collect_randomly(tf_env: TFPyEnvironment, replay_buffer: TFUniformReplayBuffer, steps: int) -> float:
    """Fill the buffer with a uniformly random policy, in chunks so progress shows; returns seconds."""
    policy = RandomTFPolicy(tf_env.time_step_spec(), tf_env.action_spec())
    chunks = [min(1000, steps - done) for done in range(0, steps, 1000)]
    runs = {n: common.function(DynamicStepDriver(tf_env, policy, observers=[replay_buffer.add_batch],
                                                 num_steps=n).run) for n in sorted(set(chunks))}
    started, time_step = time.perf_counter(), None
    with tqdm(total=steps, desc="random collection", unit="step") as bar:
        for n in chunks:
            time_step, _ = runs[n](time_step)
            bar.update(n)
    return time.perf_counter() - started


def log_row(iteration: int, metrics: list, losses: list[float], epsilon: float,
            times: dict[str, float]) -> dict:
    episodes, env_steps, average_return, average_length = (m.result().numpy() for m in metrics)
    return {"iteration": iteration, "episodes": int(episodes), "environment_steps": int(env_steps),
            "average_return": float(average_return), "average_episode_length": float(average_length),
            "loss": float(np.mean(losses)), "epsilon": epsilon, **times}


def training_batch(replay_buffer: TFUniformReplayBuffer, cfg: Settings,
                   rng: tf.random.Generator | None) -> Trajectory:
    """A batch of ``batch_size`` samples of ``n_step_update + 1`` consecutive steps, randomly
    shifted when the recipe has ``augmentation`` (``rng`` then draws the shifts)."""
    experience, _ = replay_buffer.get_next(sample_batch_size=cfg.training.batch_size,
                                           num_steps=cfg.agent.n_step_update + 1)
    if cfg.augmentation is not None:
        experience = augmented(experience, cfg.augmentation.pad, rng)
    return experience


def augmentation_rng(cfg: Settings) -> tf.random.Generator | None:
    """The shifts' generator, seeded by the training seed and checkpointed with the agent."""
    if cfg.augmentation is None:
        return None
    return tf.random.Generator.from_seed(cfg.training.seed)


def train(agent: DqnAgent, tf_env: TFPyEnvironment, replay_buffer: TFUniformReplayBuffer,
          metrics: list, epsilon: Callable[[], float], checkpoint: TrainingCheckpoint,
          cfg: Settings, start: int, log: list[dict], live: TrainingLive,
          summaries: TrainSummaries, rng: tf.random.Generator | None = None) -> list[dict]:
    """Iterations ``start`` .. ``iterations``: collect, train, log (DVCLive, TensorBoard), checkpoint."""
    training = cfg.training
    driver = DynamicStepDriver(tf_env, agent.collect_policy, observers=[replay_buffer.add_batch, *metrics],
                               num_steps=training.collect_steps_per_iteration)
    collect = common.function(driver.run)

    @common.function
    def train_step() -> tf.Tensor:
        return agent.train(training_batch(replay_buffer, cfg, rng)).loss

    time_step, policy_state = None, agent.collect_policy.get_initial_state(tf_env.batch_size)
    previous_wall = log[-1]["wall_time_s"] if log else 0.0
    started = time.perf_counter()
    losses: list[float] = []
    collect_s = train_s = 0.0
    # Written to a log file rather than a terminal, the bar updates twice a minute.
    refresh = 0.1 if sys.stderr.isatty() else 30.0
    with tqdm(total=training.iterations, initial=start, desc="training", unit="it", mininterval=refresh) as bar, \
            summaries.recording():
        for iteration in range(start + 1, training.iterations + 1):
            tick = time.perf_counter()
            time_step, policy_state = collect(time_step, policy_state)
            tock = time.perf_counter()
            losses.append(float(train_step()))
            collect_s, train_s = collect_s + tock - tick, train_s + time.perf_counter() - tock
            bar.update(1)
            if iteration % training.log_interval == 0 or iteration == training.iterations:
                row = log_row(iteration, metrics, losses, epsilon(), {
                    "collect_wall_time_s": collect_s, "train_wall_time_s": train_s,
                    "wall_time_s": previous_wall + time.perf_counter() - started})
                log.append(row)
                live.log(iteration, **row)
                summaries.write(len(losses) / (collect_s + train_s))
                bar.set_postfix(mean_return=f"{row['average_return']:.1f}", loss=f"{row['loss']:.4f}")
                steps = len(losses) * training.collect_steps_per_iteration
                tqdm.write(f"iteration {iteration}: {row['episodes']} episodes, "
                           f"{row['environment_steps']} steps, average return {row['average_return']:.2f}, "
                           f"average length {row['average_episode_length']:.0f}, loss {row['loss']:.4f}; "
                           f"collection {steps / collect_s:.0f} steps/s, "
                           f"training {len(losses) / train_s:.1f} steps/s")
                losses, collect_s, train_s = [], 0.0, 0.0
            if iteration % training.checkpoint_interval == 0 or iteration == training.iterations:
                checkpoint.save(pd.DataFrame(log))
    return log


# --- pictures ---------------------------------------------------------------------------------


def tinted(observation: np.ndarray) -> np.ndarray:
    """RGB picture of a frame stack: the older frames' mean in gray, what the newest adds in magenta."""
    frames = observation.astype(np.float32) / 255.0
    older, newest = frames[..., :-1].mean(axis=-1), frames[..., -1]
    rgb = np.repeat(older[..., None], 3, axis=-1)
    rgb += np.clip(newest - older, 0.0, 1.0)[..., None] * np.array([1.0, 0.0, 1.0], np.float32)
    return np.clip(rgb * 1.7, 0.0, 1.0)  # Atari grays are dark; brighten for the eye


def plot_frames(raw: np.ndarray, observation: np.ndarray, game: str, reports: Path) -> None:
    fig, ax = new_figure(figsize=(4, 5))
    ax.imshow(raw)
    ax.axis("off")
    save_figure(fig, reports / f"{game}_plot.png")
    fig, ax = new_figure(figsize=(4, 4))
    ax.imshow(tinted(observation))
    ax.set_title("newest frame in magenta", fontsize=10)
    ax.axis("off")
    save_figure(fig, reports / f"preprocessed_{game}_plot.png")


def plot_sub_episodes(observations: np.ndarray, path: Path) -> None:
    """One row per sampled sub-episode, one column per step."""
    rows, columns = observations.shape[:2]
    fig, axes = new_figure(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for row in range(rows):
        for column in range(columns):
            axes[row, column].imshow(tinted(observations[row, column]))
            axes[row, column].axis("off")
            axes[row, column].set_title(f"sub-episode {row + 1}, step {column + 1}", fontsize=9)
    save_figure(fig, path)


def plot_learning_curve(log: pd.DataFrame, game: str, path: Path) -> None:
    fig, (ax_return, ax_loss) = new_figure(1, 2, figsize=(11, 4))
    ax_return.plot(log["iteration"], log["average_return"])
    ax_return.set(xlabel="training iteration", ylabel="average return (last 10 episodes)",
                  title=f"{game}: return")
    ax_loss.plot(log["iteration"], log["loss"], color="tab:orange")
    ax_loss.set(xlabel="training iteration", ylabel="Huber loss (mean over the interval)", title="loss")
    save_figure(fig, path)


def first_frames(env_id: str, preprocessing: dict, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """A raw frame and the agent's observation at the same moment, after ``steps`` random steps."""
    env = make_atari_env(env_id, preprocessing, render_mode="rgb_array")
    observation, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(steps):
        observation, *_ = env.step(env.action_space.sample())
    raw = env.render()
    env.close()
    return raw, observation


# --- export -----------------------------------------------------------------------------------


def export_policy(arguments: list[str], folder: str | None = None) -> None:
    """Save the checkpoint's greedy policy with PolicySaver, with its entry in the policy index
    (into ``folder`` if given, else the policy's own folder).

    Runs in a fresh interpreter: a SavedModel names its functions with a process-wide counter,
    so only a process that traced nothing else writes the same bytes whether the policy was
    trained a minute ago or restored from a finished run's checkpoint.
    """
    cfg = settings(arguments, Params.load())
    paths = Paths(cfg.run)
    preprocessing = describe_preprocessing(cfg)
    tf_env = TFPyEnvironment(GymnasiumPyEnvironment(make_atari_env(cfg.game.env_id, preprocessing)))
    # The exported policy computes in float32: its weights are float32 whatever precision
    # trained them, and TFLite (the Pi's runtime) has no bfloat16 convolutions.
    agent, _ = build_agent(tf_env, cfg, "float32")
    restore_trackables(paths.data / "checkpoints", policy=agent.policy, global_step=agent.train_step_counter)
    saver = PolicySaver(agent.policy, batch_size=None, train_step=agent.train_step_counter)
    export_saved_policy(
        lambda folder: saver.save(str(folder)), folder or paths.policy, name=paths.policy.name,
        stage=stage_name(cfg),
        env_id=cfg.game.env_id, observation_shape=tuple(tf_env.observation_spec().shape),
        observation_dtype=tf_env.observation_spec().dtype.name,
        n_actions=int(tf_env.action_spec().maximum) + 1,
        training_max_steps=cfg.environment.max_episode_steps, training_seeds=(cfg.training.seed,),
        preprocessing=preprocessing,
        details={"algorithm": algorithm(cfg), "iterations": int(agent.train_step_counter.numpy()),
                 **({} if cfg.recipe is None else {"recipe": cfg.recipe,
                                                   "training_precision": precision_of(cfg)[0]})})


def algorithm(cfg: Settings) -> str:
    if cfg.agent.double:
        return "double DQN (TF-Agents DdqnAgent), greedy policy"
    return "DQN (TF-Agents DqnAgent), greedy policy"


def export_in_fresh_process(cfg: Settings, paths: Paths) -> PolicyEntry:
    """:func:`export_policy` in a new interpreter that imports this module (and runs no main). It
    exports under this process's temporary name of the policy folder, which then joins this
    stage's output set (stages/core/io.py)."""
    staging = temporary_name(paths.policy, folder=True)
    code = ("from stages.atari_dqn.__main__ import export_policy; "
            f"export_policy({run_arguments(cfg)!r}, {str(staging)!r})")
    exported = subprocess.run([sys.executable, "-c", code])
    if exported.returncode != 0:
        raise RuntimeError(f"exporting the {cfg.run} policy failed (exit code {exported.returncode})")
    adopt(staging, paths.policy)
    return read_entry(staged(paths.policy))


def describe_preprocessing(cfg: Settings) -> dict:
    environment = cfg.environment
    return preprocessing_description(
        frame_skip=environment.frame_skip, screen_size=environment.screen_size,
        noop_max=environment.noop_max, frame_stack=environment.frame_stack,
        max_episode_steps=environment.max_episode_steps,
        after_reset=cfg.game.after_reset.model_dump(),
        after_life_loss=cfg.game.after_life_loss.model_dump())


# --- the stage --------------------------------------------------------------------------------


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    game = cfg.name
    paths = Paths(cfg.run)
    seed_everything(cfg.training.seed)
    precision, why = precision_of(cfg)
    print(why)

    preprocessing = describe_preprocessing(cfg)
    py_env = GymnasiumPyEnvironment(make_atari_env(cfg.game.env_id, preprocessing), seed=cfg.training.seed)
    tf_env = TFPyEnvironment(py_env)
    agent, epsilon = build_agent(tf_env, cfg, precision)
    needed = buffer_bytes(agent, cfg.training.replay_buffer_capacity)
    check_buffer_fits(needed, cfg.training.replay_buffer_capacity)

    raw, observation = first_frames(cfg.game.env_id, preprocessing, cfg.pictures.seed,
                                    cfg.pictures.steps_before_frame)
    plot_frames(raw, observation, game, paths.reports)
    replay_buffer = TFUniformReplayBuffer(agent.collect_data_spec, batch_size=tf_env.batch_size,
                                          max_length=cfg.training.replay_buffer_capacity)
    print(f"replay buffer: {cfg.training.replay_buffer_capacity} steps, {needed / 1024**2:.0f} MiB; "
          f"peak resident memory so far {peak_rss_mib():.0f} MiB")
    metrics = training_metrics()

    checkpoint = TrainingCheckpoint(paths.data / "checkpoints", shaping_settings(cfg, precision),
                                    cfg.training.iterations)
    rng = augmentation_rng(cfg)
    for note in checkpoint.notes:
        print(note)
    if checkpoint.reset_reason:
        print(f"starting over: {checkpoint.reset_reason}")
    start, saved_log = checkpoint.restore(agent.train_step_counter, agent=agent, policy=agent.policy,
                                          replay_buffer=replay_buffer,
                                          metrics=MetricsGroup(metrics, "training_metrics"),
                                          **({"augmentation_rng": rng} if rng is not None else {}))
    log = saved_log.to_dict("records") if saved_log is not None else []
    if start:
        print(f"resuming from the checkpoint at iteration {start} of {cfg.training.iterations} "
              f"({checkpoint.current.path})")
    else:
        seconds = collect_randomly(tf_env, replay_buffer, cfg.training.initial_collect_steps)
        print(f"random collection: {cfg.training.initial_collect_steps / seconds:.0f} steps/s; "
              f"peak resident memory {peak_rss_mib():.0f} MiB")
    live = TrainingLive(paths.data / "dvclive", "iteration", history=log)
    summaries = TrainSummaries(paths.data / TENSORBOARD, agent.train_step_counter, metrics,
                               cfg.training.log_interval, fresh=not start)
    log = train(agent, tf_env, replay_buffer, metrics, epsilon, checkpoint, cfg, start, log, live, summaries,
                rng)
    live.close()
    summaries.close()
    print(f"peak resident memory {peak_rss_mib():.0f} MiB")
    log = pd.DataFrame(log)
    plot_learning_curve(log, cfg.run, paths.reports / "learning_curve.png")

    tf.random.set_seed(cfg.pictures.seed)  # the same sample whether training ran now or earlier
    sample, _ = replay_buffer.get_next(sample_batch_size=cfg.pictures.sub_episodes,
                                       num_steps=cfg.pictures.sub_episode_steps)
    plot_sub_episodes(sample.observation.numpy(), paths.reports / "sub_episodes_plot.png")

    entry = export_in_fresh_process(cfg, paths)

    policy = load_policy(entry)
    seeds = list(cfg.evaluation.seeds)
    play = dict(max_steps=cfg.evaluation.max_steps, make_env=lambda: make_policy_env(entry))
    trained = evaluate_policy(entry.env_id, policy, seeds, **play)
    rng = np.random.default_rng(cfg.evaluation.seed_start)
    random_play = evaluate_policy(entry.env_id, lambda obs: rng.integers(0, entry.n_actions, len(obs)),
                                  seeds, **play)

    gif_env = make_policy_env(entry, render_mode="rgb_array")
    episode = record_episode(gif_env, lambda obs: int(policy(obs[None])[0]), cfg.pictures.gif_seed,
                             cfg.pictures.gif_frames - 1)
    gif_env.close()
    write_gif(paths.reports / "trained_agent.gif", episode.frames, fps=cfg.pictures.gif_fps)

    last = log.iloc[-1]
    recipe = {} if cfg.recipe is None else {"recipe": cfg.recipe, "precision": precision,
                                            "seed": cfg.training.seed}
    write_json(paths.reports / "metrics.json", {
        "game": game, "env_id": cfg.game.env_id, **recipe,
        "training": {"iterations": int(last["iteration"]), "episodes": int(last["episodes"]),
                     "environment_steps": int(last["environment_steps"]),
                     "average_return": float(last["average_return"]),
                     "average_episode_length": float(last["average_episode_length"])},
        "replay_buffer": {"capacity": cfg.training.replay_buffer_capacity, "bytes": needed},
        "evaluation": {"greedy_policy": trained.summary(), "random_policy": random_play.summary(),
                       "seeds": seeds},
        "gif_episode": {"seed": cfg.pictures.gif_seed, "frames": len(episode.frames),
                        "return": episode.total_reward},
    })
    write_timings(stage_name(cfg), {"training": {"wall_time_s": float(last["wall_time_s"])}})
    print(f"{game}: greedy policy {trained.mean:.1f} +/- {trained.std:.1f} over {len(seeds)} episodes, "
          f"random play {random_play.mean:.1f} +/- {random_play.std:.1f}")


def shaping_settings(cfg: Settings, precision: str) -> dict:
    """Everything that shapes the trained state; a checkpoint made otherwise is not resumed.

    The book's keys are as they always were, so its checkpoints stay resumable; a recipe's own
    keys, the augmentation and the precision that ran are there only where they differ from the
    book's (a run that started in bfloat16 and resumes where float32 runs starts over)."""
    shaping = cfg.model_dump(include={"game", "environment", "network", "agent", "training"})
    for how_long in ("iterations", "log_interval", "checkpoint_interval"):
        del shaping["training"][how_long]
    shaping["agent"]["optimizer"] = optimizer_name(cfg.agent)  # TF1's RMSprop's checkpoints start over
    book = {"network": {"dueling": False, "precision": "float32"},
            "agent": {"double": False, "n_step_update": 1, "adam": None}}
    for block, defaults in book.items():
        for key, default in defaults.items():
            if shaping[block][key] == default:
                del shaping[block][key]
    if cfg.network.precision != "float32":
        shaping["network"]["precision"] = precision
    if cfg.augmentation is not None:
        shaping["augmentation"] = cfg.augmentation.model_dump()
    return shaping


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    run_stage(main)
