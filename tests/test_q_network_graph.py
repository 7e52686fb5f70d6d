"""A TF-Agents saved Q-policy's network read back from its graph, and its int8 model with action
preferences from pairwise comparisons (stages/pi_bundle/q_network_graph.py, stages/pi_bundle/tflite.py).

The networks here are small TF-Agents QNetworks saved with PolicySaver, as the atari_dqn stage
saves its policies: a convolutional one on uint8 frames (the Atari layout, scaled down) and a
dense one on float observations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import stages  # noqa: F401  (selects tf_keras for TF-Agents before TensorFlow loads)
from stages.policies.index import PolicyEntry
from stages.pi_bundle.q_network_graph import UnreadableNetwork, read_q_network

FRAMES = (12, 12, 2)
N_ACTIONS = 4


def saved_q_policy(folder: Path, observation_spec, seed: int, **network) -> tuple:
    """A greedy TF-Agents Q-policy saved to ``folder`` and loaded back, with its QNetwork."""
    import tensorflow as tf
    from tf_agents.networks.q_network import QNetwork
    from tf_agents.policies.greedy_policy import GreedyPolicy
    from tf_agents.policies.policy_saver import PolicySaver
    from tf_agents.policies.q_policy import QPolicy
    from tf_agents.specs import tensor_spec
    from tf_agents.trajectories import time_step as ts

    tf.keras.utils.set_random_seed(seed)
    action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, N_ACTIONS - 1)
    q_net = QNetwork(observation_spec, action_spec, **network)
    policy = GreedyPolicy(QPolicy(ts.time_step_spec(observation_spec), action_spec, q_network=q_net))
    PolicySaver(policy, batch_size=None).save(str(folder))
    return tf.saved_model.load(str(folder)), q_net


def frames_policy(folder: Path) -> tuple:
    import tensorflow as tf
    import tf_keras
    from tf_agents.specs import tensor_spec

    # Bounded below 255: TF-Agents samples a spec's values up to its maximum + 1, which wraps to 0 in uint8.
    spec = tensor_spec.BoundedTensorSpec(FRAMES, tf.uint8, 0, 254)
    return saved_q_policy(folder, spec, 3, conv_layer_params=[(8, 3, 2), (8, 3, 1)], fc_layer_params=(16,),
                          preprocessing_layers=tf_keras.layers.Lambda(lambda x: tf.cast(x, tf.float32) / 255.0))


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *FRAMES), dtype=np.uint8)


def greedy_actions(saved, observations: np.ndarray) -> np.ndarray:
    from stages.pi_bundle.tflite import serving_function

    entry = PolicyEntry(name="q", stage="test", env_id="CartPole-v1", model="saved_policy",
                        output="tf_agents_policy", observation_shape=observations.shape[1:],
                        observation_dtype=observations.dtype.name, n_actions=N_ACTIONS)
    return next(iter(serving_function(entry, saved)(observations).values())).numpy()


def test_a_convolutional_q_network_is_read_back_with_its_strides_and_scaling(tmp_path):
    saved, q_net = frames_policy(tmp_path / "policy")
    network = read_q_network(saved)
    assert [(layer.kind, layer.strides, layer.relu) for layer in network.layers] == [
        ("conv2d", (2, 2), True), ("conv2d", (1, 1), True), ("dense", (1, 1), True), ("dense", (1, 1), False)]
    assert network.divisor == 255.0 and network.n_actions == N_ACTIONS
    observations = frames(200)
    expected, _ = q_net(observations)
    np.testing.assert_allclose(network.q_values(observations).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert (np.argmax(expected, axis=1) == greedy_actions(saved, observations)).all()


def test_a_dense_q_network_on_float_observations_is_read_back(tmp_path):
    import tensorflow as tf
    from tf_agents.specs import tensor_spec

    saved, q_net = saved_q_policy(tmp_path / "policy", tensor_spec.TensorSpec((5,), tf.float32), 4,
                                  fc_layer_params=(8, 8))
    network = read_q_network(saved)
    assert [layer.kind for layer in network.layers] == ["dense"] * 3 and network.divisor == 1.0
    observations = np.random.default_rng(1).normal(size=(100, 5)).astype(np.float32)
    np.testing.assert_allclose(network.q_values(observations).numpy(), q_net(observations)[0].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_a_dueling_head_is_read_as_its_advantages(tmp_path):
    """The Atari recipes' dueling network (stages/atari_dqn/agent.py) is read back as its torso and
    advantage layer: Q-values up to one constant per observation, so the same greedy actions and
    the same difference between any two actions' Q-values."""
    import tensorflow as tf
    from tf_agents.policies.greedy_policy import GreedyPolicy
    from tf_agents.policies.policy_saver import PolicySaver
    from tf_agents.policies.q_policy import QPolicy
    from tf_agents.specs import tensor_spec
    from tf_agents.trajectories import time_step as ts

    from stages.atari_dqn.agent import AtariQNetwork

    tf.keras.utils.set_random_seed(6)
    spec = tensor_spec.BoundedTensorSpec(FRAMES, tf.uint8, 0, 254)
    action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, N_ACTIONS - 1)
    q_net = AtariQNetwork(spec, action_spec, conv_layers=[(8, 3, 2)], fc_layers=(16,), dueling=True,
                          precision="float32")
    policy = GreedyPolicy(QPolicy(ts.time_step_spec(spec), action_spec, q_network=q_net))
    PolicySaver(policy, batch_size=None).save(str(tmp_path / "policy"))
    saved = tf.saved_model.load(str(tmp_path / "policy"))
    network = read_q_network(saved)
    assert network.dueling and [layer.kind for layer in network.layers] == ["conv2d", "dense", "dense"]
    assert network.n_actions == N_ACTIONS and network.divisor == 255.0
    observations = frames(200, seed=3)
    expected = q_net(observations)[0].numpy()
    read = network.q_values(observations).numpy()
    shift = expected - read
    np.testing.assert_allclose(shift, np.repeat(shift[:, :1], N_ACTIONS, axis=1), rtol=1e-5, atol=1e-5)
    assert np.ptp(shift[:, 0]) > 0  # the constant is V(s) - mean A(s, .): it varies with s
    assert (np.argmax(read, axis=1) == greedy_actions(saved, observations)).all()


def test_a_network_with_layers_it_does_not_know_is_refused(tmp_path):
    import tensorflow as tf
    from tf_agents.specs import tensor_spec

    saved, _ = saved_q_policy(tmp_path / "policy", tensor_spec.TensorSpec((5,), tf.float32), 5,
                              fc_layer_params=(8,), activation_fn=tf.keras.activations.tanh)
    with pytest.raises(UnreadableNetwork, match="Tanh"):
        read_q_network(saved)


def test_pairwise_preferences_keep_the_greedy_action_and_survive_int8(tmp_path):
    """In float, the preference built from clipped pairwise differences has the Q-values' argmax on
    every observation (a property of the construction); in int8 it keeps at least as many of the
    greedy actions as the Q-values quantized after training do."""
    from ai_edge_litert.interpreter import Interpreter

    from stages.pi_bundle.tflite import _int8, convert_pairwise, pairwise_layer, serving_function

    saved, q_net = frames_policy(tmp_path / "policy")
    network = read_q_network(saved)
    entry = PolicyEntry(name="q", stage="test", env_id="CartPole-v1", model="saved_policy",
                        output="tf_agents_policy", observation_shape=FRAMES, observation_dtype="uint8",
                        n_actions=N_ACTIONS)
    model = convert_pairwise(entry, network, frames(300, seed=1), pairwise_layer(network, frames(300, seed=1), 0.25))
    held_out = frames(1000, seed=2)
    greedy = np.argmax(q_net(held_out)[0].numpy(), axis=1)
    assert (np.argmax(model.float_outputs(held_out), axis=1) == greedy).all()

    def int8_actions(content: bytes, outputs_the_action: bool = False) -> np.ndarray:
        interpreter = Interpreter(model_content=content)
        interpreter.allocate_tensors()
        into, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
        actions = []
        for frame in held_out:
            interpreter.set_tensor(into, frame[None])
            interpreter.invoke()
            output = interpreter.get_tensor(out)[0]
            actions.append(int(output) if outputs_the_action else int(np.argmax(output)))
        return np.array(actions)

    post_training = _int8(serving_function(entry, saved), frames(300, seed=1), False, False)  # the stage's
    pairwise = np.mean(int8_actions(model.content) == greedy)
    plain = np.mean(int8_actions(post_training, outputs_the_action=True) == greedy)
    assert pairwise >= plain and pairwise >= 0.9, (pairwise, plain)
