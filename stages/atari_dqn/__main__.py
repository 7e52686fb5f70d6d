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

runs another recipe of params.yaml's ``atari_dqn.recipes`` (stages/atari_dqn/__init__.py): its
settings can make the agent a double DQN with n-step targets, its network dueling and bfloat16,
its optimizer Adam, and shift the frames of every training batch at random. Its folders and
policy are named ``<game>_<recipe>_s<seed>``. With none of those settings, the agent, network and
optimizer are built exactly as the book's (the same graph, the same bytes).

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
import tf_keras
from tf_agents.agents.dqn.dqn_agent import DdqnAgent, DqnAgent
from tf_agents.drivers.dynamic_step_driver import DynamicStepDriver
from tf_agents.environments.tf_py_environment import TFPyEnvironment
from tf_agents.eval.metric_utils import MetricsGroup
from tf_agents.metrics import tf_metrics
from tf_agents.networks.encoding_network import EncodingNetwork
from tf_agents.networks.network import Network
from tf_agents.networks.q_network import QNetwork
from tf_agents.policies.policy_saver import PolicySaver
from tf_agents.policies.random_tf_policy import RandomTFPolicy
from tf_agents.replay_buffers.tf_uniform_replay_buffer import TFUniformReplayBuffer
from tf_agents.trajectories.trajectory import Trajectory
from tf_agents.utils import common
from tqdm import tqdm

from pi.policy_contract import make_atari_env, preprocessing_description
from stages.atari_dqn import Agent, Settings, settings
from stages.atari_dqn.checkpoints import TrainingCheckpoint, restore_trackables
from stages.policies.evaluation import evaluate_policy
from stages.core.frames import record_episode, write_gif
from stages.core.io import adopt, staged, temporary_name, write_json
from stages.core.live_log import TrainingLive
from stages.core.plotting import new_figure, save_figure
from stages.policies.export import export_saved_policy
from stages.policies.index import PolicyEntry, load_policy, make_policy_env, read_entry
from stages.core.seeding import seed_everything
from stages.core.settings import ParamError, Params, run_stage
from stages.tf_agents_kit.environment import GymnasiumPyEnvironment
from stages.tf_agents_kit.summaries import FOLDER as TENSORBOARD, TrainSummaries
from stages.core.timings import write_timings

OPTIMIZER = "Keras RMSprop (epsilon added to the root)"
MEMORY_HEADROOM_BYTES = 2 * 1024**3  # TensorFlow, the networks, the environment, a checkpoint's buffers


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bfloat16 arithmetic


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


# --- precision --------------------------------------------------------------------------------


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not there or has none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags")
            for flag in line.split(":", 1)[1].split()}


def select_precision(requested: str, flags: set[str]) -> tuple[str, str]:
    """The precision that runs and a sentence saying why: mixed_bfloat16 only where the CPU has
    bfloat16 instructions (elsewhere TensorFlow emulates it, slower than float32)."""
    if requested == "float32":
        return "float32", "precision: float32 (network.precision)"
    found = [flag for flag in BF16_FLAGS if flag in flags]
    if found:
        return requested, f"precision: {requested} (network.precision; this CPU has {', '.join(found)})"
    return "float32", (f"precision: float32, not the requested {requested}: this CPU has no bfloat16 "
                       f"instructions (none of {', '.join(BF16_FLAGS)} in /proc/cpuinfo)")


def precision_of(cfg: Settings) -> tuple[str, str]:
    return select_precision(cfg.network.precision, cpu_flags())


# --- the network ------------------------------------------------------------------------------


def scaled_pixels() -> tf_keras.layers.Layer:
    return tf_keras.layers.Lambda(lambda obs: tf.cast(obs, tf.float32) / 255.0)


class AtariQNetwork(Network):
    """The Nature DQN stack with a dueling head or a plain one, in float32 or mixed bfloat16.

    TF-Agents' QNetwork has neither: its last layer is one Q-value per action and its layers
    take one dtype. This network reuses TF-Agents' EncodingNetwork for the convolutions and dense
    layers (the same layers and initializers as QNetwork's, with a Keras mixed-precision policy
    when asked) and implements TF-Agents' Network interface, so DqnAgent and DdqnAgent, their
    target-network copy, the policies and PolicySaver take it as they take QNetwork. The heads
    compute in float32 (the loss and the greedy choice never see bfloat16 rounding); with
    ``dueling`` they are a value V(s) and advantages A(s, a), and
    Q(s, a) = V(s) + A(s, a) - mean over a' of A(s, a'): the mean, not the max, as Dopamine's
    FullRainbowNetwork (and Wang et al.'s experiments) have it.
    """

    def __init__(self, observation_spec, action_spec, *, conv_layers: list[tuple[int, int, int]],
                 fc_layers: tuple[int, ...], dueling: bool, precision: str,
                 name: str = "AtariQNetwork") -> None:
        super().__init__(input_tensor_spec=observation_spec, state_spec=(), name=name)
        n_actions = int(action_spec.maximum - action_spec.minimum + 1)
        dtype = tf.float32 if precision == "float32" else tf_keras.mixed_precision.Policy(precision)
        self._encoder = EncodingNetwork(
            observation_spec, preprocessing_layers=scaled_pixels(), conv_layer_params=conv_layers,
            fc_layer_params=fc_layers, activation_fn=tf_keras.activations.relu, dtype=dtype,
            batch_squash=True)

        def head(units: int, name: str) -> tf_keras.layers.Dense:  # QNetwork's last layer
            return tf_keras.layers.Dense(
                units, kernel_initializer=tf.random_uniform_initializer(minval=-0.03, maxval=0.03),
                bias_initializer=tf.constant_initializer(-0.2), dtype=tf.float32, name=name)

        self._dueling = dueling
        if dueling:
            self._value, self._advantage = head(1, "value"), head(n_actions, "advantage")
        else:
            self._q_values = head(n_actions, "q_values")

    def call(self, observation, step_type=None, network_state=(), training=False):
        features, network_state = self._encoder(observation, step_type=step_type,
                                                network_state=network_state, training=training)
        features = tf.cast(features, tf.float32)
        if not self._dueling:
            return self._q_values(features, training=training), network_state
        advantage = self._advantage(features, training=training)
        value = self._value(features, training=training)
        return value + advantage - tf.reduce_mean(advantage, axis=-1, keepdims=True), network_state


# --- augmentation -----------------------------------------------------------------------------


def random_shift(observations: tf.Tensor, pad: int, rng: tf.random.Generator) -> tf.Tensor:
    """Each image of ``observations`` ([..., height, width, channels]) padded by ``pad`` pixels
    repeating its edge pixels, then cropped back at a random offset: shifted by -pad .. +pad
    pixels in each direction, its own shift per image. Done by gathering clipped row and column
    indices, which is the pad-and-crop without building the padded copy (tf.pad has no "edge"
    mode). The dtype stays (uint8 frames stay uint8)."""
    height, width, channels = observations.shape[-3:]
    images = tf.reshape(observations, [-1, height, width, channels])
    count = tf.shape(images)[0]
    offsets = rng.uniform([2, count], minval=-pad, maxval=pad + 1, dtype=tf.int32)
    rows = tf.clip_by_value(tf.range(height)[None, :] + offsets[0][:, None], 0, height - 1)
    columns = tf.clip_by_value(tf.range(width)[None, :] + offsets[1][:, None], 0, width - 1)
    shifted = tf.gather(tf.gather(images, rows, axis=1, batch_dims=1), columns, axis=2, batch_dims=1)
    return tf.reshape(shifted, tf.shape(observations))


def augmented(experience: Trajectory, pad: int, rng: tf.random.Generator) -> Trajectory:
    """The training batch ([batch, steps, ...]) with its first and last observations randomly
    shifted (:func:`random_shift`): the only ones the n-step loss reads (the state and the
    bootstrapped state), each with its own shift, as Dopamine's DrQ augments states and next
    states with separate keys. The steps between are left as they are.

    Applied to the experience handed to ``agent.train``, not inside the network or the agent:
    the policies (collecting, greedy, exported) call the network on the frames as they are, so
    acting and evaluation never see a shift, and TF-Agents' agents stay as they are.
    """
    frames = experience.observation
    ends = random_shift(tf.concat([frames[:, :1], frames[:, -1:]], axis=1), pad, rng)
    return experience._replace(observation=tf.concat([ends[:, :1], frames[:, 1:-1], ends[:, 1:]], axis=1))


# --- the agent --------------------------------------------------------------------------------


def build_agent(tf_env: TFPyEnvironment, cfg: Settings, precision: str = "float32"
                ) -> tuple[DqnAgent, Callable[[], float]]:
    """The Nature DQN (pixels / 255 -> three convolutions -> dense 512 -> one Q-value per action),
    and the exploration rate it currently uses. The book's recipe is TF-Agents' QNetwork and
    DqnAgent with RMSprop; a dueling head or a bfloat16 setting takes :class:`AtariQNetwork`
    (computing in ``precision``, what runs: see :func:`precision_of`), ``double`` DdqnAgent,
    ``adam`` Adam. The network's class follows the settings alone, so the variables are the same
    whatever precision computes with them."""
    agent_cfg, training, network = cfg.agent, cfg.training, cfg.network
    conv_layers = [tuple(layer) for layer in network.conv_layers]
    if network.dueling or network.precision != "float32":
        q_net = AtariQNetwork(tf_env.observation_spec(), tf_env.action_spec(), conv_layers=conv_layers,
                              fc_layers=tuple(network.fc_layers), dueling=network.dueling,
                              precision=precision)
    else:
        q_net = QNetwork(
            tf_env.observation_spec(), tf_env.action_spec(),
            preprocessing_layers=scaled_pixels(),
            conv_layer_params=conv_layers,
            fc_layer_params=tuple(network.fc_layers),
        )
    optimizer = adam(agent_cfg) if agent_cfg.adam else rmsprop(agent_cfg)
    train_step = tf.Variable(0, dtype=tf.int64, name="train_step")
    epsilon = tf_keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=agent_cfg.epsilon_start,
        decay_steps=agent_cfg.epsilon_decay_env_steps // training.collect_steps_per_iteration,
        end_learning_rate=agent_cfg.epsilon_end)
    agent = (DdqnAgent if agent_cfg.double else DqnAgent)(
        tf_env.time_step_spec(), tf_env.action_spec(), q_network=q_net, optimizer=optimizer,
        target_update_period=agent_cfg.target_update_period,
        td_errors_loss_fn=common.element_wise_huber_loss, gamma=agent_cfg.discount,
        train_step_counter=train_step, epsilon_greedy=lambda: epsilon(train_step),
        **({"n_step_update": agent_cfg.n_step_update} if agent_cfg.n_step_update != 1 else {}))
    agent.initialize()
    return agent, lambda: float(epsilon(train_step))


def rmsprop(agent_cfg: Agent) -> tf_keras.optimizers.legacy.RMSprop:
    """The book's RMSprop: Keras' rule, step = lr * g / (sqrt(ms - mg^2) + epsilon).

    TF1's RMSPropOptimizer adds epsilon under the root instead; with DQN's gradients (1e-4 to
    1e-6 per weight) sqrt(1e-5) then dominates and the steps of the convolutions and the dense
    layer shrink 25-300x. (Keras keeps its rule only without momentum, as the book has it.)
    """
    return tf_keras.optimizers.legacy.RMSprop(
        learning_rate=agent_cfg.learning_rate, rho=agent_cfg.rmsprop_rho,
        momentum=agent_cfg.rmsprop_momentum, epsilon=agent_cfg.rmsprop_epsilon,
        centered=agent_cfg.rmsprop_centered)


def adam(agent_cfg: Agent) -> tf_keras.optimizers.legacy.Adam:
    """Keras' Adam with the recipe's learning rate, epsilon and betas (settings: Adam)."""
    return tf_keras.optimizers.legacy.Adam(
        learning_rate=agent_cfg.learning_rate, beta_1=agent_cfg.adam.beta_1,
        beta_2=agent_cfg.adam.beta_2, epsilon=agent_cfg.adam.epsilon)


def optimizer_name(agent_cfg: Agent) -> str:
    return "Keras Adam (legacy)" if agent_cfg.adam else OPTIMIZER


def buffer_bytes(agent: DqnAgent, capacity: int) -> int:
    per_step = sum(int(np.prod(spec.shape)) * spec.dtype.size
                   for spec in tf.nest.flatten(agent.collect_data_spec))
    return per_step * capacity


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


def check_buffer_fits(needed: int, capacity: int) -> None:
    available = available_memory_bytes()
    if needed + MEMORY_HEADROOM_BYTES > available:
        raise ParamError(
            f"atari_dqn.training.replay_buffer_capacity = {capacity} is not allowed: the buffer "
            f"needs {needed / 1024**3:.1f} GB (+{MEMORY_HEADROOM_BYTES / 1024**3:.0f} GB headroom) "
            f"and this machine has {available / 1024**3:.1f} GB available")


def training_metrics() -> list:
    return [tf_metrics.NumberOfEpisodes(), tf_metrics.EnvironmentSteps(),
            tf_metrics.AverageReturnMetric(), tf_metrics.AverageEpisodeLengthMetric()]


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
