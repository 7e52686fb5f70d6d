"""The common policy export: round trip through the index, action rules, stable bytes."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sys

import numpy as np
import pytest

from stages.policies.evaluation import evaluate_policy
from stages.policies.export import export_keras_policy
from stages.policies.index import (
    PolicyEntry,
    PolicyIndexError,
    actions_from_outputs,
    load_index,
    load_policy,
    read_entry,
)
from tests.conftest import file_digests, run
from tests.test_dag import dvc_view


def _small_model(seed: int, units: int, activation: str):
    import tensorflow as tf
    import tf_keras

    tf_keras.backend.clear_session()  # layer names restart, as in a fresh stage process
    tf.keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([tf_keras.layers.Dense(5, activation="elu", input_shape=(4,)),
                                tf_keras.layers.Dense(units, activation=activation)])


def test_greedy_action_rules():
    assert actions_from_outputs("p_left", np.array([[0.9], [0.1], [0.5]])).tolist() == [0, 1, 0]
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert actions_from_outputs("action_probabilities", probs).tolist() == [1, 0]
    assert actions_from_outputs("q_values", np.array([[1.0, 3.0], [2.0, 2.0]])).tolist() == [1, 0]


def test_sampled_action_frequencies_follow_the_probabilities():
    rng = np.random.default_rng(0)
    p_left = np.full((20000, 1), 0.3)
    assert abs(np.mean(actions_from_outputs("p_left", p_left, rng) == 0) - 0.3) < 0.02
    probs = np.tile([0.2, 0.5, 0.3], (20000, 1))
    counts = np.bincount(actions_from_outputs("action_probabilities", probs, rng), minlength=3)
    assert np.allclose(counts / 20000, [0.2, 0.5, 0.3], atol=0.02)


def test_export_round_trip_plays_like_the_model(tmp_path):
    model = _small_model(3, 2, "linear")
    entry = export_keras_policy(model, tmp_path / "policies" / "toy", stage="test",
                                env_id="CartPole-v1", output="q_values", training_max_steps=200,
                                training_seeds=(1, 2))
    assert entry.observation_shape == (4,) and entry.n_actions == 2
    shutil.copytree(tmp_path / "policies/toy", tmp_path / "policies/.toy.tmp-1")  # a killed run's
    index = load_index(tmp_path / "policies")
    assert list(index) == ["toy"] and index["toy"] == read_entry(tmp_path / "policies" / "toy")
    observations = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    expected = np.argmax(model(observations).numpy(), axis=1)
    assert np.array_equal(load_policy(index["toy"])(observations), expected)
    result = evaluate_policy("CartPole-v1", load_policy(index["toy"]), [5, 6], progress=False)
    assert len(result.returns) == 2 and result.min >= 1


def test_same_weights_give_the_same_bytes(tmp_path):
    digests = []
    for name in ("a", "b"):
        entry = export_keras_policy(_small_model(7, 1, "sigmoid"), tmp_path / name, stage="test",
                                    env_id="CartPole-v1", output="p_left")
        digests.append(hashlib.sha256(entry.model_path.read_bytes()).hexdigest())
        # The entry records the digest of the model as written.
        assert json.loads((entry.folder / "policy.json").read_text())["model_sha256"] == digests[-1]
    assert digests[0] == digests[1]


def test_a_failed_export_keeps_the_previous_policy(tmp_path):
    folder = tmp_path / "toy"
    export_keras_policy(_small_model(1, 2, "softmax"), folder, stage="test",
                        env_id="CartPole-v1", output="action_probabilities")
    before = (folder / "model.keras").read_bytes()
    with pytest.raises(PolicyIndexError, match="output 'logits' is not one of"):
        export_keras_policy(_small_model(2, 2, "softmax"), folder, stage="test",
                            env_id="CartPole-v1", output="logits")
    assert (folder / "model.keras").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_bad_entries_are_named(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    with pytest.raises(PolicyIndexError, match="policy 'broken' .*: no entry at"):
        read_entry(folder, stage="train@1")
    (folder / "policy.json").write_text(json.dumps({"name": "broken", "colour": "red"}))
    with pytest.raises(PolicyIndexError, match=r"unknown fields \['colour'\]"):
        read_entry(folder)
    entry = PolicyEntry(name="x", stage="s", env_id="CartPole-v1", model="model.keras",
                        observation_shape=(4,), observation_dtype="float32", output="q_values",
                        n_actions=2, folder=folder)
    with pytest.raises(PolicyIndexError, match="model file .* is missing; rebuild it with `dvc repro s`"):
        load_policy(entry)


def _exported(tmp_path):
    return export_keras_policy(_small_model(4, 2, "linear"), tmp_path / "toy", stage="toy@0",
                               env_id="CartPole-v1", output="q_values")


@pytest.mark.parametrize("change, problem", [
    (lambda e: e.update(model="../../../../etc/passwd"), "is not a path inside the policy's folder"),
    (lambda e: e.update(model="/etc/passwd"), "is not a path inside the policy's folder"),
    (lambda e: e.update(output="logits"), "output 'logits' is not one of"),
    (lambda e: e.update(observation_shape=[4, 0]), "observation_shape [4, 0] is not a list of positive integers"),
    (lambda e: e.update(observation_shape="4"), "is not a list of positive integers"),
    (lambda e: e.update(n_actions=0), "n_actions 0 is not a positive integer"),
    (lambda e: e.update(observation_dtype="float128x"), "is not a NumPy dtype"),
    (lambda e: e.update(model_sha256="abc"), "model_sha256 'abc' is not a sha256 digest"),
    (lambda e: e.pop("model_sha256"), "records no model_sha256 (it was exported before"),
])
def test_an_entry_that_cannot_be_trusted_is_refused_with_its_stage(tmp_path, change, problem):
    entry = _exported(tmp_path)
    data = json.loads((entry.folder / "policy.json").read_text())
    change(data)
    (entry.folder / "policy.json").write_text(json.dumps(data))
    with pytest.raises(PolicyIndexError) as error:
        read_entry(entry.folder)
    assert problem in str(error.value)
    assert "policy 'toy' (made by stage toy@0)" in str(error.value)
    assert "`dvc repro toy@0`" in str(error.value)


def test_a_model_file_that_does_not_open_is_refused_before_tensorflow_sees_it(tmp_path):
    entry = _exported(tmp_path)
    content = entry.model_path.read_bytes()
    entry.model_path.write_bytes(content[: len(content) // 2])  # truncated
    with pytest.raises(PolicyIndexError, match="cannot be opened as a Keras archive"):
        read_entry(entry.folder)
    damaged = bytearray(content)
    damaged[len(damaged) // 3] ^= 0xFF  # inside a compressed member
    entry.model_path.write_bytes(bytes(damaged))
    with pytest.raises(PolicyIndexError, match="policy 'toy' .*(damaged|cannot be opened)"):
        read_entry(entry.folder)


def test_a_model_swapped_for_another_policys_is_refused_by_its_digest(tmp_path):
    """The same shapes (another seed's model): only the recorded digest tells them apart."""
    entry = _exported(tmp_path / "policies")
    other = export_keras_policy(_small_model(5, 2, "linear"), tmp_path / "policies" / "other",
                                stage="toy@1", env_id="CartPole-v1", output="q_values")
    entry.model_path.write_bytes(other.model_path.read_bytes())
    for read in (lambda: load_index(tmp_path / "policies", {"toy": "toy@0", "other": "toy@1"}),
                 lambda: load_policy(entry)):
        with pytest.raises(PolicyIndexError) as error:
            read()
        assert "policy 'toy' (made by stage toy@0)" in str(error.value)
        assert "is not the model the stage exported (its sha256 differs" in str(error.value)
        assert "rebuild it with `dvc repro toy@0`" in str(error.value)


def _described_as(entry, **changes):
    """Rewrite ``entry``'s policy.json with ``changes`` and the digest of the model now in place
    (an entry that describes another model than the one it sits with, digest and all)."""
    from stages.policies.index import model_digest

    data = json.loads((entry.folder / "policy.json").read_text())
    data.update(changes, model_sha256=model_digest(entry.model_path))
    (entry.folder / "policy.json").write_text(json.dumps(data))
    return read_entry(entry.folder)


@pytest.mark.parametrize("model, changes, problem", [
    # A p_left model (one sigmoid unit) where the entry says two Q-values: the swap.
    ((1, "sigmoid"), {}, "gives outputs of shape (1,), the entry's q_values policy of 2 actions needs (2,)"),
    ((2, "linear"), {"observation_shape": [5]}, "takes observations of shape (4,), the entry says (5,)"),
    ((2, "linear"), {"n_actions": 3}, "gives outputs of shape (2,), the entry's q_values policy of 3 actions"),
    ((2, "linear"), {"output": "p_left"}, "the entry's p_left policy of 2 actions needs (1,)"),
])
def test_a_model_whose_shapes_do_not_fit_its_entry_is_refused_when_loaded(tmp_path, model, changes, problem):
    entry = _exported(tmp_path)
    wrong = export_keras_policy(_small_model(6, *model), tmp_path / "wrong", stage="w", env_id="CartPole-v1",
                                output="p_left" if model[1] == "sigmoid" else "q_values")
    entry.model_path.write_bytes(wrong.model_path.read_bytes())
    with pytest.raises(PolicyIndexError) as error:
        load_policy(_described_as(entry, **changes))
    assert problem in str(error.value)
    assert "policy 'toy' (made by stage toy@0)" in str(error.value)
    assert "the model is not the one its entry describes" in str(error.value)


def test_the_index_is_what_the_dag_declares(tmp_path, capsys):
    entry = _exported(tmp_path / "policies")
    assert list(load_index(tmp_path / "policies", {"toy": "toy@0"})) == ["toy"]
    # A folder no stage declares (a removed seed) is left out, and said so.
    assert load_index(tmp_path / "policies", {}) == {}
    assert "no stage of dvc.yaml exports it" in capsys.readouterr().err
    # A declared policy that is missing, or whose entry names another stage, is an error.
    with pytest.raises(PolicyIndexError, match="policy 'gone' .*no entry at"):
        load_index(tmp_path / "policies", {"toy": "toy@0", "gone": "toy@1"})
    with pytest.raises(PolicyIndexError, match="says it was made by stage toy@0, but dvc.yaml's stage toy@9"):
        load_index(tmp_path / "policies", {"toy": "toy@9"})
    assert entry.stage == "toy@0"


def _truncate(ws):
    model = ws / "data/policies/pg_cartpole_s42/model.keras"
    model.write_bytes(model.read_bytes()[:1000])
    return "pg_cartpole_s42", "pg_cartpole@42"


def _swap(ws):
    """The issue's swap: nn_policy_s42's model copied over dqn_s42's (evaluate used to play it)."""
    policies = ws / "data/policies"
    (policies / "dqn_s42/model.keras").write_bytes((policies / "nn_policy_s42/model.keras").read_bytes())
    return "dqn_s42", "dqn@dqn-42"


@pytest.mark.e2e
@pytest.mark.parametrize("fault", [_truncate, _swap], ids=["truncated", "swapped"])
@pytest.mark.parametrize("consumer", ["evaluate", "pi"])
def test_every_consumer_refuses_a_broken_policy_by_name(clone_of_quick_run, consumer, fault):
    """A truncated model, or one copied over another policy's, stops the policy's own evaluation
    (evaluate_<trainer>) and its Pi conversion (pi_<trainer>) alike, with one sentence that names
    the policy and the command that rebuilds it; their outputs stay as they were. (The gathering
    stages and the report read no model.)"""
    ws = clone_of_quick_run()
    policy, maker = fault(ws)
    stage = f"{consumer}_{maker}"
    view = dvc_view(ws)[stage]
    outputs = list(view["outs"])
    before = file_digests(ws, outputs)
    command = shlex.split(view["cmd"])
    result = run([sys.executable, *command[1:]], ws, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: policy '{policy}' (made by stage {maker})" in result.stderr
    assert f"rebuild it with `dvc repro {maker}`" in result.stderr
    assert "Traceback" not in result.stderr
    assert file_digests(ws, outputs) == before


def test_a_policysaver_export_plays_through_load_policy(tmp_path):
    from tf_agents.environments.tf_py_environment import TFPyEnvironment
    from tf_agents.networks.q_network import QNetwork
    from tf_agents.policies.greedy_policy import GreedyPolicy
    from tf_agents.policies.policy_saver import PolicySaver
    from tf_agents.policies.q_policy import QPolicy

    from stages.policies.export import export_saved_policy
    from stages.policies.index import make_policy_env
    from stages.tf_agents_kit.environment import make_py_environment

    tf_env = TFPyEnvironment(make_py_environment("CartPole-v1"))
    q_net = QNetwork(tf_env.observation_spec(), tf_env.action_spec(), fc_layer_params=(8,))
    policy = GreedyPolicy(QPolicy(tf_env.time_step_spec(), tf_env.action_spec(), q_network=q_net))
    saver = PolicySaver(policy, batch_size=None)
    entry = export_saved_policy(lambda folder: saver.save(str(folder)), tmp_path / "toy", stage="test",
                                env_id="CartPole-v1", observation_shape=(4,), observation_dtype="float32",
                                n_actions=2)
    assert entry.output == "tf_agents_policy" and read_entry(tmp_path / "toy") == entry
    assert len(entry.model_sha256) == 64
    observations = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    expected = np.argmax(q_net(observations)[0].numpy(), axis=1)
    play = load_policy(entry)
    assert np.array_equal(play(observations), expected)
    result = evaluate_policy("CartPole-v1", play, [5, 6], make_env=lambda: make_policy_env(entry),
                             max_steps=50, progress=False)
    assert len(result.returns) == 2 and result.max <= 50
    with pytest.raises(ValueError, match=r"expects observations of shape \(4,\), got \(5,\)"):
        play(np.zeros((2, 5), np.float32))

    # The SavedModel folder's digest covers each of its files: a changed variables file is refused.
    variables = entry.model_path / "variables" / "variables.data-00000-of-00001"
    original = variables.read_bytes()
    variables.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(PolicyIndexError, match="policy 'toy' .*saved_policy is not the model the stage exported"):
        read_entry(entry.folder)
    variables.write_bytes(original)
    # An entry that does not describe the saved policy (another game's action count, another
    # observation) is refused once the policy is loaded.
    for changes, problem in (({"n_actions": 4}, "has 2 actions, the entry says 4"),
                             ({"observation_shape": [84, 84, 4], "observation_dtype": "uint8"},
                              "takes observations of shape (4,), the entry says (84, 84, 4) and takes float32 "
                              "observations, the entry says uint8")):
        with pytest.raises(PolicyIndexError) as error:
            load_policy(_described_as(entry, **changes))
        assert problem in str(error.value) and "policy 'toy' (made by stage test)" in str(error.value)
