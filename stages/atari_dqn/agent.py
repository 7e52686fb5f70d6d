"""The Atari agent: its Q-network (the book's, or dueling), the precision it computes in, the
random shift of training frames, its optimizer and the check that its replay buffer fits.

Kept apart from the stage's training loop (stages/atari_dqn/__main__.py) so that each reads on its
own; the recipes' choices are explained where they are built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras
from tf_agents.agents.dqn.dqn_agent import DdqnAgent, DqnAgent
from tf_agents.environments.tf_py_environment import TFPyEnvironment
from tf_agents.metrics import tf_metrics
from tf_agents.networks.encoding_network import EncodingNetwork
from tf_agents.networks.network import Network
from tf_agents.networks.q_network import QNetwork
from tf_agents.trajectories.trajectory import Trajectory
from tf_agents.utils import common

from stages.atari_dqn import Agent, Settings
from stages.core.settings import ParamError

OPTIMIZER = "Keras RMSprop (epsilon added to the root)"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bfloat16 arithmetic
MEMORY_HEADROOM_BYTES = 2 * 1024**3  # TensorFlow, the networks, the environment, a checkpoint's buffers


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
