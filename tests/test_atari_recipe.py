"""The Atari stage's second recipe (DrQ(epsilon)'s changes to the book's DQN): its settings, the
random-shift augmentation of training batches, the n-step double-DQN targets, the dueling head
and the choice of precision; the shift, which observations of a training sample it moves, and
the n-step double-DQN loss each against a small case computed by hand. End to end (e2e): every
run of atari_dqn.runs in the quick profile, under Snakemake (the shared quick run) and DVC."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml
import tensorflow as tf
from tf_agents.environments.tf_py_environment import TFPyEnvironment
from tf_agents.replay_buffers.tf_uniform_replay_buffer import TFUniformReplayBuffer
from tf_agents.trajectories import time_step as ts
from tf_agents.trajectories.trajectory import Trajectory

from pi.policy_contract import make_atari_env
from stages.atari_dqn import Section, settings
from stages.atari_dqn.agent import (
    AtariQNetwork,
    augmented,
    build_agent,
    cpu_flags,
    random_shift,
    select_precision,
)
from stages.atari_dqn.__main__ import (
    collect_randomly,
    describe_preprocessing,
    shaping_settings,
    training_batch,
)
from stages.core.dag import read_dag
from stages.core.settings import ParamError, Params
from stages.tf_agents_kit.environment import GymnasiumPyEnvironment
from tests.conftest import DVC, file_digests, remove_outputs, run

# DrQ(epsilon)'s changes (Dopamine, labs/atari_100k/configs/DrQ_eps.gin), small where it is only
# about time.
DRQ = {
    "network": {"dueling": True},
    "agent": {"double": True, "n_step_update": 10, "learning_rate": 1.0e-4, "adam": {"epsilon": 1.5e-4},
              "epsilon_decay_env_steps": 5000, "target_update_period": 1},
    "training": {"collect_steps_per_iteration": 1, "batch_size": 4, "initial_collect_steps": 40,
                 "replay_buffer_capacity": 200},
    "augmentation": {"pad": 4},
}


def params_with(recipe: dict, name: str = "drq_eps") -> Params:
    data = copy.deepcopy(Params.load().data)
    data["atari_dqn"]["recipes"] = {name: recipe}
    data["atari_dqn"]["runs"] = {f"breakout_{name}_s0": {"game": "breakout", "recipe": name, "seed": 0}}
    return Params(data)


def recipe_settings(recipe: dict, *extra: str):
    return settings(["--game", "breakout", "--recipe", "drq_eps", *extra], params_with(recipe))


def atari_env(cfg) -> TFPyEnvironment:
    preprocessing = describe_preprocessing(cfg)
    return TFPyEnvironment(GymnasiumPyEnvironment(make_atari_env(cfg.game.env_id, preprocessing),
                                                  seed=cfg.training.seed))


# --- settings ---------------------------------------------------------------------------------


def test_a_recipe_changes_only_its_keys_and_the_book_reads_none_of_them():
    params = params_with(DRQ)
    book = settings(["--game", "breakout"], params)
    assert book.run == "breakout" and book.recipe is None
    assert not book.network.dueling and not book.agent.double and book.agent.n_step_update == 1
    assert book.agent.adam is None and book.augmentation is None and book.network.precision == "float32"
    assert not any("recipes" in key or "runs" in key for key in params.read_keys)

    drq = recipe_settings(DRQ, "--seed", "3")
    assert drq.run == "breakout_drq_eps_s3" and drq.training.seed == 3
    assert drq.network.dueling and drq.agent.double and drq.agent.n_step_update == 10
    assert drq.agent.adam.epsilon == 1.5e-4 and drq.augmentation.pad == 4
    assert drq.network.conv_layers == book.network.conv_layers  # not changed: the book's
    assert drq.agent.discount == book.agent.discount


def test_the_book_checkpoint_settings_are_as_before_and_a_recipe_adds_its_own():
    # The keys the book's checkpoints were written with: they must still match, so a book run
    # stopped before this code came resumes after it.
    book = shaping_settings(settings(["--game", "breakout"], params_with(DRQ)), "float32")
    assert set(book) == {"game", "environment", "network", "agent", "training"}
    assert set(book["network"]) == {"conv_layers", "fc_layers"}
    assert set(book["agent"]) == {"learning_rate", "rmsprop_rho", "rmsprop_momentum", "rmsprop_epsilon",
                                  "rmsprop_centered", "epsilon_start", "epsilon_end", "epsilon_decay_env_steps",
                                  "target_update_period", "discount", "optimizer"}
    drq = shaping_settings(recipe_settings({**DRQ, "network": {"dueling": True, "precision": "mixed_bfloat16"}}),
                           "float32")
    assert drq["network"]["precision"] == "float32" and drq["network"]["dueling"]  # what ran
    assert drq["augmentation"] == {"pad": 4} and drq["agent"]["n_step_update"] == 10
    assert drq["agent"]["optimizer"] == "Keras Adam (legacy)"


def test_runs_name_a_game_a_recipe_and_a_seed():
    section = params_with(DRQ).raw("atari_dqn")
    assert Section.model_validate(section).runs["breakout_drq_eps_s0"].seed == 0
    with pytest.raises(ValueError, match="runs.breakout_drq_eps_s0 must be named breakout_drq_eps_s1"):
        Section.model_validate({**section, "runs": {"breakout_drq_eps_s0": {
            "game": "breakout", "recipe": "drq_eps", "seed": 1}}})
    with pytest.raises(ValueError, match="recipe 'other' is not in"):
        Section.model_validate({**section, "runs": {"breakout_other_s0": {
            "game": "breakout", "recipe": "other", "seed": 0}}})


def test_bad_recipes_are_named():
    with pytest.raises(ParamError, match=r"atari_dqn.recipes.drq_eps.agent.n_step_update"):
        recipe_settings({"agent": {"n_step_update": 0}})
    with pytest.raises(ParamError, match="no recipe 'other'"):
        settings(["--game", "breakout", "--recipe", "other"], params_with(DRQ))
    with pytest.raises(ParamError, match="--seed needs --recipe"):
        settings(["--game", "breakout", "--seed", "3"], params_with(DRQ))
    with pytest.raises(ParamError, match="initial_collect_steps must hold a training sample"):
        recipe_settings({**DRQ, "training": {**DRQ["training"], "initial_collect_steps": 10}})


# --- augmentation -----------------------------------------------------------------------------


def edge_shifts(image: np.ndarray, pad: int) -> dict[tuple[int, int], np.ndarray]:
    """Every pad-and-crop of one [height, width, channels] image, by (row, column) shift."""
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    height, width = image.shape[:2]
    return {(dy, dx): padded[pad + dy:pad + dy + height, pad + dx:pad + dx + width]
            for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}


def test_random_shift_is_an_edge_pad_and_a_crop_within_pad():
    pad = 4
    images = np.random.default_rng(0).integers(0, 256, (3, 2, 16, 12, 4), dtype=np.uint8)
    shifted = random_shift(tf.constant(images), pad, tf.random.Generator.from_seed(1)).numpy()
    assert shifted.dtype == np.uint8 and shifted.shape == images.shape
    seen = set()
    for index in np.ndindex(*images.shape[:2]):
        matches = [shift for shift, crop in edge_shifts(images[index], pad).items()
                   if np.array_equal(crop, shifted[index])]
        assert len(matches) == 1, f"image {index} is no shift within +-{pad} of its original"
        seen.add(matches[0])
    assert len(seen) > 1 and seen != {(0, 0)}  # shifts differ from image to image


class FixedShifts:
    """A stand-in for the shifts' generator: ``uniform`` gives these row and column offsets, one
    per image, as random_shift asks for them ([2, images])."""

    def __init__(self, rows: list[int], columns: list[int]) -> None:
        self.offsets = tf.constant([rows, columns], tf.int32)

    def uniform(self, shape, minval, maxval, dtype):
        offsets = self.offsets.numpy()
        assert list(shape) == list(offsets.shape) and dtype == tf.int32
        assert (minval <= offsets).all() and (offsets < maxval).all()  # what the generator could draw
        return self.offsets


def test_a_shift_by_hand():
    """Two 4 x 4 images of two channels (a frame stack), pad 1: each is shifted by its own offset,
    both channels alike, the edge pixels repeated where the image moved away from the border."""
    first = np.arange(16, dtype=np.uint8).reshape(4, 4)
    second = first + 100
    images = np.stack([np.stack([first, first + 50], axis=-1), np.stack([second, second + 50], axis=-1)])
    # Image 1: crop one row down and one column left of centre (pixel (i, j) is (i+1, j-1)'s);
    # image 2: one row up and one column right (pixel (i, j) is (i-1, j+1)'s).
    shifted = random_shift(tf.constant(images), 1, FixedShifts([1, -1], [-1, 1])).numpy()
    np.testing.assert_array_equal(shifted[0, ..., 0], [[4, 4, 5, 6],
                                                       [8, 8, 9, 10],
                                                       [12, 12, 13, 14],
                                                       [12, 12, 13, 14]])
    np.testing.assert_array_equal(shifted[1, ..., 0], [[101, 102, 103, 103],
                                                       [101, 102, 103, 103],
                                                       [105, 106, 107, 107],
                                                       [109, 110, 111, 111]])
    np.testing.assert_array_equal(shifted[..., 1], shifted[..., 0] + 50)  # the stack moves as one
    assert shifted.dtype == np.uint8


def test_a_training_sample_has_its_first_and_last_observation_shifted_by_hand():
    """One sample of 3 steps (n_step_update = 2): the loss reads the first observation (the state)
    and the last (the bootstrapped state); each gets its own shift, the one between none, and
    nothing but the observations changes."""
    frames = np.stack([np.arange(16, dtype=np.uint8).reshape(4, 4) + 100 * step for step in range(3)])
    sample = Trajectory(
        step_type=tf.constant([[1, 1, 1]], tf.int32), observation=tf.constant(frames[None, ..., None]),
        action=tf.constant([[2, 0, 3]], tf.int64), policy_info=(), next_step_type=tf.constant([[1, 1, 1]], tf.int32),
        reward=tf.constant([[1.0, 0.0, 5.0]], tf.float32), discount=tf.constant([[1.0, 1.0, 1.0]], tf.float32))
    # Offsets, first observation then last: (rows +1, columns 0) and (rows 0, columns -1).
    shifted = augmented(sample, 1, FixedShifts([1, 0], [0, -1]))
    observations = shifted.observation.numpy()[0, ..., 0]
    np.testing.assert_array_equal(observations[0], [[4, 5, 6, 7],
                                                    [8, 9, 10, 11],
                                                    [12, 13, 14, 15],
                                                    [12, 13, 14, 15]])
    np.testing.assert_array_equal(observations[1], frames[1])  # between: as collected
    np.testing.assert_array_equal(observations[2], [[200, 200, 201, 202],
                                                    [204, 204, 205, 206],
                                                    [208, 208, 209, 210],
                                                    [212, 212, 213, 214]])
    for field in ("step_type", "action", "next_step_type", "reward", "discount"):
        np.testing.assert_array_equal(getattr(shifted, field).numpy(), getattr(sample, field).numpy())


def test_training_batches_are_shifted_and_acting_is_not():
    cfg = recipe_settings(DRQ)
    tf_env = atari_env(cfg)
    agent, _ = build_agent(tf_env, cfg)
    buffer = TFUniformReplayBuffer(agent.collect_data_spec, batch_size=1, max_length=200)
    collect_randomly(tf_env, buffer, 40)

    tf.random.set_seed(5)
    plain, _ = buffer.get_next(sample_batch_size=cfg.training.batch_size, num_steps=cfg.agent.n_step_update + 1)
    tf.random.set_seed(5)  # the same samples, now through the training path
    batch = training_batch(buffer, cfg, tf.random.Generator.from_seed(2))
    np.testing.assert_array_equal(batch.action.numpy(), plain.action.numpy())
    np.testing.assert_array_equal(batch.reward.numpy(), plain.reward.numpy())
    frames, shifted = plain.observation.numpy(), batch.observation.numpy()
    assert shifted.shape == frames.shape
    changed = 0
    for index in np.ndindex(*frames.shape[:2]):
        if index[1] in (0, frames.shape[1] - 1):  # the state and the bootstrapped state
            crops = edge_shifts(frames[index], cfg.augmentation.pad)
            assert any(np.array_equal(crop, shifted[index]) for crop in crops.values())
            changed += not np.array_equal(frames[index], shifted[index])
        else:  # steps the n-step loss does not read stay as they are
            np.testing.assert_array_equal(shifted[index], frames[index])
    assert changed > frames.shape[0]  # most of the 4 x 2 shifted frame stacks moved

    # Acting: the greedy policy's action is the network's argmax on the frames as they are,
    # every time (no shift, no randomness).
    observation = frames[:, 0]
    time_step = ts.restart(tf.constant(observation), batch_size=observation.shape[0])
    q_values, _ = agent._q_network(tf.constant(observation))
    for _ in range(3):
        np.testing.assert_array_equal(agent.policy.action(time_step).action.numpy(),
                                      np.argmax(q_values.numpy(), axis=-1))


# --- the agent's targets and the dueling head -------------------------------------------------


def constant_q(network: AtariQNetwork, value: float, advantages: list[float]) -> None:
    """Every weight 0 but the heads' biases: Q(s, .) = value + advantages - mean(advantages)."""
    for variable in network.variables:
        variable.assign(tf.zeros_like(variable))
    network._value.bias.assign([value])
    network._advantage.bias.assign(advantages)


def test_n_step_double_dqn_targets_by_hand():
    cfg = recipe_settings({**DRQ, "agent": {**DRQ["agent"], "n_step_update": 2, "discount": 0.9}})
    tf_env = atari_env(cfg)
    agent, _ = build_agent(tf_env, cfg)
    q = np.array([0.5, 0.1, 0.3, 0.2, 0.4])  # the value, then four advantages
    for network in (agent._q_network, agent._target_q_network):
        constant_q(network, q[0], list(q[1:]))
    q_values = q[0] + q[1:] - q[1:].mean()  # [0.35, 0.55, 0.45, 0.65]

    shape = tf_env.observation_spec().shape
    mid, last, first = (int(kind) for kind in (ts.StepType.MID, ts.StepType.LAST, ts.StepType.FIRST))
    experience = Trajectory(  # two samples of 3 steps (n_step_update + 1)
        step_type=tf.constant([[mid, mid, mid], [mid, last, first]], tf.int32),
        observation=tf.zeros((2, 3, *shape), tf.uint8),
        action=tf.constant([[1, 2, 0], [0, 3, 1]], tf.int64),
        policy_info=(),
        next_step_type=tf.constant([[mid, mid, mid], [last, first, mid]], tf.int32),
        reward=tf.constant([[1.0, 0.5, 7.0], [1.0, 0.0, 7.0]], tf.float32),
        discount=tf.constant([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]], tf.float32))

    def huber(error: float) -> float:
        return 0.5 * error**2 if abs(error) <= 1 else abs(error) - 0.5

    # Sample 1: two rewards, then gamma^2 times the target network's value of the action the
    # online network picks in the third state (the same networks here: the largest Q).
    target_1 = 1.0 + 0.9 * 0.5 + 0.9**2 * q_values.max()
    # Sample 2: the episode ends after the first reward: nothing after it counts.
    target_2 = 1.0
    expected = np.mean([huber(target_1 - q_values[1]), huber(target_2 - q_values[0])])
    # The loss that agent.train computes (before its update). TF-Agents' public agent.loss()
    # would not do: it leaves out the last factor gamma (its _loss defaults to gamma = 1).
    loss = agent.train(experience).loss.numpy()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_double_dqn_values_the_online_networks_choice_with_the_target_network_by_hand():
    """Online and target networks that disagree: the bootstrapped value is the target network's
    value of the action the online network picks, not the target network's largest value."""
    cfg = recipe_settings({**DRQ, "agent": {**DRQ["agent"], "n_step_update": 2, "discount": 0.9}})
    tf_env = atari_env(cfg)
    agent, _ = build_agent(tf_env, cfg)
    constant_q(agent._q_network, 0.0, [0.0, 1.0, 0.0, 0.2])         # Q = [-0.3, 0.7, -0.3, -0.1]
    constant_q(agent._target_q_network, 1.0, [2.0, 0.0, 0.0, 0.0])  # Q = [2.5, 0.5, 0.5, 0.5]
    mid = int(ts.StepType.MID)
    experience = Trajectory(
        step_type=tf.constant([[mid] * 3], tf.int32),
        observation=tf.zeros((1, 3, *tf_env.observation_spec().shape), tf.uint8),
        action=tf.constant([[3, 2, 0]], tf.int64), policy_info=(),
        next_step_type=tf.constant([[mid] * 3], tf.int32),
        reward=tf.constant([[1.0, 0.5, 7.0]], tf.float32), discount=tf.constant([[1.0, 1.0, 1.0]], tf.float32))
    # The online network picks action 1 in the third state; the target network values it 0.5
    # (its own largest value, 2.5, would give 3.475). Predicted: the online Q of action 3, -0.1.
    target = 1.0 + 0.9 * 0.5 + 0.9**2 * 0.5  # 1.855
    error = target - (-0.1)  # 1.955: Huber's linear part
    np.testing.assert_allclose(agent.train(experience).loss.numpy(), error - 0.5, rtol=1e-5)


def test_dueling_q_values_average_to_the_state_value():
    cfg = recipe_settings(DRQ)
    tf_env = atari_env(cfg)
    network = AtariQNetwork(tf_env.observation_spec(), tf_env.action_spec(),
                            conv_layers=[tuple(layer) for layer in cfg.network.conv_layers],
                            fc_layers=tuple(cfg.network.fc_layers), dueling=True, precision="float32")
    observations = tf.constant(np.random.default_rng(3).integers(0, 256, (5, *tf_env.observation_spec().shape)),
                               tf.uint8)
    q_values, _ = network(observations)
    features, _ = network._encoder(observations)
    value = network._value(features).numpy()[:, 0]
    advantage = network._advantage(features).numpy()
    # Mean-subtracted (Dopamine's FullRainbowNetwork), not max-subtracted: the Q-values average
    # to V and keep the advantages' differences.
    np.testing.assert_allclose(q_values.numpy().mean(axis=1), value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q_values.numpy() - q_values.numpy()[:, :1], advantage - advantage[:, :1],
                               rtol=1e-5, atol=1e-6)
    assert q_values.shape == (5, tf_env.action_spec().maximum + 1)


# --- precision --------------------------------------------------------------------------------


def test_precision_follows_the_cpu_and_says_why(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    flags = cpu_flags(cpuinfo)
    assert "avx512_bf16" in flags
    assert select_precision("mixed_bfloat16", flags) == (
        "mixed_bfloat16", "precision: mixed_bfloat16 (network.precision; this CPU has avx512_bf16)")
    precision, why = select_precision("mixed_bfloat16", {"fpu", "avx2"})
    assert precision == "float32"
    assert why == ("precision: float32, not the requested mixed_bfloat16: this CPU has no bfloat16 "
                   "instructions (none of avx512_bf16, amx_bf16 in /proc/cpuinfo)")
    assert select_precision("float32", flags)[0] == "float32"
    assert cpu_flags(tmp_path / "absent") == set()


def test_bfloat16_network_computes_in_bfloat16_and_answers_in_float32(tmp_path):
    cfg = recipe_settings({**DRQ, "network": {"dueling": True, "precision": "mixed_bfloat16"}})
    tf_env = atari_env(cfg)
    network = AtariQNetwork(tf_env.observation_spec(), tf_env.action_spec(),
                            conv_layers=[tuple(layer) for layer in cfg.network.conv_layers],
                            fc_layers=tuple(cfg.network.fc_layers), dueling=True,
                            precision="mixed_bfloat16")
    observations = tf.zeros((2, *tf_env.observation_spec().shape), tf.uint8)
    q_values, _ = network(observations)
    features, _ = network._encoder(observations)
    assert features.dtype == tf.bfloat16 and q_values.dtype == tf.float32
    assert all(variable.dtype == tf.float32 for variable in network.variables)
    # The export rebuilds the network in float32 (TFLite has no bfloat16 convolutions) and
    # restores the same variables into it.
    float32 = AtariQNetwork(tf_env.observation_spec(), tf_env.action_spec(),
                            conv_layers=[tuple(layer) for layer in cfg.network.conv_layers],
                            fc_layers=tuple(cfg.network.fc_layers), dueling=True, precision="float32")
    float32.create_variables()
    saved = tf.train.Checkpoint(network=network).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(network=float32).restore(saved).assert_existing_objects_matched()
    for ours, theirs in zip(float32.variables, network.variables, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_every_run_of_a_recipe_goes_through_the_pipeline_in_the_quick_profile_under_both_engines(
        clone_of_quick_run):
    """The quick run (Snakemake, recorded in dvc.lock) trained every run of atari_dqn.runs, on
    both games: each exported its policy, which was evaluated and converted for the Pi; the
    aggregate sets Breakout's seeds beside the book's single run, against environment steps; the
    report has a section per recipe and game, with that figure. Then DVC trains one run of each
    game again from nothing (outputs and checkpoints deleted): the same bytes, and nothing else runs."""
    ws = clone_of_quick_run()
    section = yaml.safe_load((ws / "params.yaml").read_text())["atari_dqn"]
    runs = section["runs"]
    assert {run_["game"] for run_ in runs.values()} == {"breakout", "space_invaders"}
    stages = {stage.name: stage for stage in read_dag(ws)}
    for name, run_ in runs.items():
        stage = stages[f"atari_dqn_recipes@{name}"]
        assert all((ws / output).exists() for output in (*stage.outs, *stage.state)), name
        metrics = json.loads((ws / f"reports/atari_dqn/{name}/metrics.json").read_text())
        assert (metrics["recipe"], metrics["seed"], metrics["precision"]) == (run_["recipe"], run_["seed"], "float32")
        training = section["recipes"][run_["recipe"]]["training"]
        assert metrics["training"]["environment_steps"] == training["iterations"]  # one step per iteration
        entry = json.loads((ws / f"data/policies/{name}_dqn/policy.json").read_text())
        assert entry["stage"] == stage.name and entry["training_seeds"] == [run_["seed"]]
        assert entry["details"]["recipe"] == run_["recipe"] and "double DQN" in entry["details"]["algorithm"]
        assert json.loads((ws / f"reports/pi_bundle/policies/{name}_dqn.json").read_text())
    evaluated = pd.read_csv(ws / "reports/evaluate/summary.csv").set_index("policy")
    assert (evaluated.at["breakout_drq_eps_s2_dqn", "algorithm"], evaluated.at["breakout_drq_eps_s2_dqn", "seed"]) \
        == ("breakout_drq_eps", 2)
    aggregate = pd.read_csv(ws / "reports/aggregate/summary.csv").set_index("algorithm")
    assert aggregate.at["breakout_drq_eps", "runs"] == 3 and aggregate.at["breakout_dqn", "runs"] == 1
    pairs = pd.read_csv(ws / "reports/aggregate/probability_of_improvement.csv")
    assert len(pairs[(pairs["algorithm_x"] == "breakout_drq_eps") & (pairs["algorithm_y"] == "breakout_dqn")]) == 1
    curves = pd.read_csv(ws / "reports/aggregate/learning_curves.csv")
    assert {"breakout_dqn", "breakout_drq_eps", "space_invaders_dqn", "space_invaders_drq_eps"} <= set(
        curves.loc[curves["x_name"] == "environment_steps", "algorithm"])
    page = (ws / "reports/index.html").read_text()
    for experiment in ("atari_dqn_recipes@breakout-drq_eps", "atari_dqn_recipes@space_invaders-drq_eps"):
        assert f'<section id="{experiment}">' in page
    assert (ws / "reports/report/learning_curves_BreakoutNoFrameskip-v4.png").stat().st_size > 10_000
    assert "report/learning_curves_BreakoutNoFrameskip-v4.png" in page
    manifest = json.loads((ws / "data/pi_bundle/manifest.json").read_text())
    assert {f"{name}_dqn" for name in runs} <= set(manifest["policies"])
    recipes = [name for name in stages if name.startswith(("atari_dqn_recipes@", "evaluate_atari_dqn_recipes@",
                                                           "pi_atari_dqn_recipes@"))]
    assert json.loads(run([DVC, "status", "--json", *recipes], ws).stdout or "{}") == {}

    chosen = [stages["atari_dqn_recipes@breakout_drq_eps_s0"], stages["atari_dqn_recipes@space_invaders_drq_eps_s0"]]
    before = {stage.name: file_digests(ws, stage.outs) for stage in chosen}
    remove_outputs(ws, chosen)
    ran = [line.split("'")[1] for line in run([DVC, "repro"], ws).stdout.splitlines()
           if line.startswith("Running stage '")]
    assert sorted(ran) == sorted(stage.name for stage in chosen)
    for stage in chosen:
        assert file_digests(ws, stage.outs) == before[stage.name], stage.name
