"""The Raspberry Pi bundle: checksums, parity, refusals, reproducible archive, and an emulated Pi.

The stage runs once per session, for both workers (``built_once``), in a small workspace on a
policy index made here, one policy of each kind: P(left) (a linear rule that balances CartPole),
action probabilities (LunarLander), Q-values, and a TF-Agents PolicySaver export; the workspace's
dvc.yaml declares them as the outputs of one stage, beside the repository's pi_bundle stage. The quick profile's real policies go through the
same stage in tests/test_pipeline.py. The runner is always started in a process that cannot
import TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.pi_bundle.archive import write_reproducible_tar_gz
from stages.core.settings import ParamError, Params, read_params_file
from pipeline.workspace import REPO_ROOT, engine_env, merge
from stages.pi_bundle import settings as bundle_settings
from tests.conftest import built_once

PI = REPO_ROOT / "pi"
CARTPOLE = "balance_p_left"
CONTINUOUS = "random_continuous_lander"
POLICIES = (CARTPOLE, "random_q_values", "random_lander", "tf_agents_q", CONTINUOUS)
MAKER = "test_policies"  # the workspace's stage that declares them
EXIT_BAD_BUNDLE, EXIT_BAD_INPUT, EXIT_UNSAFE_MODEL = 3, 4, 5
# The runner, in a process where TensorFlow cannot be imported (the Pi has none).
NO_TENSORFLOW = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.modules['tf_keras'] = None; "
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def runner(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(bundle / "run_policy.py"), *args],
                          capture_output=True, text=True, env=engine_env())


# --- a policy index of every kind -------------------------------------------------------------


def _keras(layers: list, seed: int):
    import tensorflow as tf
    import tf_keras

    tf.keras.utils.set_random_seed(seed)
    return tf_keras.Sequential(layers)


def build_index(index: Path) -> None:
    import tf_keras
    from tf_agents.environments.tf_py_environment import TFPyEnvironment
    from tf_agents.networks.q_network import QNetwork
    from tf_agents.policies.greedy_policy import GreedyPolicy
    from tf_agents.policies.policy_saver import PolicySaver
    from tf_agents.policies.q_policy import QPolicy

    from stages.policies.export import export_keras_policy, export_saved_policy
    from stages.tf_agents_kit.environment import make_py_environment

    cartpole = {"stage": MAKER, "env_id": "CartPole-v1", "training_seeds": (0,)}
    # P(left) = sigmoid(-10 (3 angle + angular velocity)): push toward the side the pole falls to.
    balance = _keras([tf_keras.Input((4,)), tf_keras.layers.Dense(1, activation="sigmoid")], 0)
    balance.set_weights([np.array([[0.0], [0.0], [-30.0], [-10.0]], np.float32), np.zeros(1, np.float32)])
    export_keras_policy(balance, index / CARTPOLE, output="p_left", **cartpole)
    q_values = _keras([tf_keras.Input((4,)), tf_keras.layers.Dense(16, activation="elu"),
                       tf_keras.layers.Dense(2)], 1)
    export_keras_policy(q_values, index / "random_q_values", output="q_values", **cartpole)
    lander = _keras([tf_keras.Input((8,)), tf_keras.layers.Dense(16, activation="relu"),
                     tf_keras.layers.Dense(4, activation="softmax")], 2)
    export_keras_policy(lander, index / "random_lander", output="action_probabilities", stage=MAKER,
                        env_id="LunarLander-v3")
    # SAC's kind: the action vector itself, tanh-squashed and scaled to the bounds (stages/sac).
    continuous = _keras([tf_keras.Input((8,)), tf_keras.layers.Dense(16, activation="relu"),
                         tf_keras.layers.Dense(2, activation="tanh"),
                         tf_keras.layers.Rescaling(scale=[1.0, 1.0], offset=[0.0, 0.0])], 3)
    export_keras_policy(continuous, index / CONTINUOUS, output="continuous_action", stage=MAKER,
                        env_id="LunarLanderContinuous-v3")

    tf_env = TFPyEnvironment(make_py_environment("CartPole-v1"))
    q_net = QNetwork(tf_env.observation_spec(), tf_env.action_spec(), fc_layer_params=(8,))
    policy = GreedyPolicy(QPolicy(tf_env.time_step_spec(), tf_env.action_spec(), q_network=q_net))
    saver = PolicySaver(policy, batch_size=None)
    export_saved_policy(lambda folder: saver.save(str(folder)), index / "tf_agents_q", observation_shape=(4,),
                        observation_dtype="float32", n_actions=2, **cartpole)


def build_a_bundle(ws: Path) -> None:
    """A workspace where the policies above were converted by a per-policy stage (as a pi_<trainer>
    stage does) and packed by the pi_bundle stage (quick-profile settings)."""
    ws.mkdir(parents=True)
    for name in ("stages", "pipeline", "pi"):
        (ws / name).symlink_to(REPO_ROOT / name)
    params = merge(read_params_file(REPO_ROOT / "params.yaml"),
                   yaml.safe_load((REPO_ROOT / "profiles/quick.yaml").read_text()))
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    policies = [f"data/policies/{name}" for name in POLICIES]
    # One conversion per environment, as a pi_<trainer> stage converts its environment's policies.
    converts = [["-m", "stages.pi_bundle.policy", "--env", "CartPole-v1", CARTPOLE, "random_q_values", "tf_agents_q"],
                ["-m", "stages.pi_bundle.policy", "--env", "LunarLander-v3", "--env", "LunarLanderContinuous-v3",
                 "random_lander", CONTINUOUS]]
    dvc_yaml = {"stages": {MAKER: {"cmd": "python -m tests.test_pi_bundle", "outs": policies},
                           f"pi_{MAKER}": {"cmd": " && ".join("python " + " ".join(c) for c in converts),
                                           "deps": policies,
                                           "outs": [f"data/pi_policies/{name}" for name in POLICIES]
                                           + [f"reports/pi_bundle/policies/{name}.json" for name in POLICIES]},
                           "pi_bundle": stages["pi_bundle"]}}
    (ws / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=ws, check=True)
    build_index(ws / "data/policies")
    for command in (*converts, ["-m", "stages.pi_bundle"]):
        result = subprocess.run([sys.executable, *command], cwd=ws, capture_output=True, text=True,
                                env=engine_env())
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="session")
def bundled(tmp_path_factory, worker_id) -> Path:
    """The workspace of :func:`build_a_bundle`, built once per session and read-only: a test that
    changes the bundle works on a copy (:func:`copy_of`)."""
    return built_once("pi_bundle", build_a_bundle, tmp_path_factory, worker_id)


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "pi_bundle"))


def printed_actions(stdout: str, expected: list) -> list:
    """The runner's ``act`` output as the manifest lists actions: ints, or a continuous action's
    components (one line each, written with repr: the float32 values exactly)."""
    if expected and isinstance(expected[0], list):
        return [[float(x) for x in line.split()] for line in stdout.splitlines()]
    return [int(a) for a in stdout.split()]


# --- the bundle -------------------------------------------------------------------------------


def test_every_file_is_in_the_manifest_with_its_checksum(bundled):
    bundle = bundled / "data/pi_bundle"
    manifest = manifest_of(bundle)
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest, name
    assert set(manifest["policies"]) == set(POLICIES)
    assert {"run_policy.py", "policy_runtime.py", "policy_contract.py", "README.md"} <= set(manifest["files"])
    for spec in manifest["policies"].values():
        assert set(spec["models"]) == {"float32", "int8"}
        assert spec["models"]["int8"]["input"]["dtype"] == "int8"  # float observations: full integer
        assert spec["models"]["float32"]["converted_by"].startswith("tensorflow 2.")
    # The saved TF-Agents policy's float32 model keeps the argmax inside; its int8 model is made from
    # the Q-network read back from the graph, and outputs action preferences.
    assert manifest["policies"]["tf_agents_q"]["output"] == "action"
    assert manifest["policies"]["tf_agents_q"]["models"]["int8"]["output_kind"] == "action_preferences"
    int8 = manifest["policies"][CARTPOLE]["models"]["int8"]
    assert int8["output"]["scale"] > 0 and len(int8["input_normalization"]["scale"]) == 4


def test_each_policys_default_precision_follows_its_measurements(bundled):
    """int8 is the default exactly where it kept the target share of held-out actions and a mean
    return inside the float32 policy's interval; its model is marked unsafe everywhere else."""
    from stages.pi_bundle.parity import default_precision

    manifest = manifest_of(bundled / "data/pi_bundle")
    report = json.loads((bundled / "reports/pi_bundle/benchmark.json").read_text())
    target = bundle_settings([], Params(read_params_file(bundled / "params.yaml"))).int8_agreement_target
    for name, spec in manifest["policies"].items():
        int8, float32 = spec["models"]["int8"]["measured"], spec["models"]["float32"]["measured"]
        interval = float32["return"]["interval"]
        assert interval["low"] <= float32["return"]["mean"] <= interval["high"], name
        expected, _ = default_precision(int8["action_agreement"], target, int8["return"]["mean"],
                                        (interval["low"], interval["high"]))
        assert spec["default_precision"] == expected == report[name]["default_precision"], name
        assert spec["models"]["int8"]["safe"] is (expected == "int8"), name
        assert ("unsafe_reason" in spec["models"]["int8"]) is (expected != "int8"), name
        assert int8["action_agreement"] == report[name]["int8"]["action_agreement"], name


def test_fine_tuning_brings_the_int8_models_closer_to_the_float_policies(bundled):
    """Measured on held-out observations, against the same policy's post-training int8 model."""
    from stages.pi_bundle.tflite import largest_multiplier

    bundle = bundled / "data/pi_bundle"
    report = json.loads((bundled / "reports/pi_bundle/benchmark.json").read_text())
    manifest = manifest_of(bundle)
    for name, policy in report.items():
        if name == CONTINUOUS:  # quantized after training only (its own test)
            continue
        tuning, int8 = policy["int8"]["fine_tuning"], manifest["policies"][name]["models"]["int8"]
        assert tuning["applied"], (name, tuning)
        assert int8["fine_tuned"] is tuning["shipped"].startswith("fine_tuned"), name
        if int8["fine_tuned"]:
            assert int8["output_kind"] == "action_preferences" and int8["output"]["dtype"] == "int8"
        # LiteRT's default delegate (XNNPACK) aborts on a requantization multiplier of 256 or more.
        assert largest_multiplier((bundle / int8["file"]).read_bytes()) < 256, name
    # The TF-Agents policy: its Q-network read back from the graph, with action preferences from
    # pairwise comparisons as output, the pairwise layer as it is and fine-tuned, beside the
    # post-training model of the saved graph; the best of the three on the fine-tuning observations
    # ships. Measured: 0.998 of the held-out actions, as many as the 8-bit input allows (0.998),
    # against 0.994 quantized after training.
    q_policy = report["tf_agents_q"]["int8"]
    assert "TF-Agents" in q_policy["fine_tuning"]["what"]
    assert set(q_policy["fine_tuning"]["action_agreement_on_fine_tuning_observations"]) == {
        "post_training", "pairwise_output", "fine_tuned_pairwise_output"}
    assert manifest["policies"]["tf_agents_q"]["models"]["int8"]["made_by"] == q_policy["fine_tuning"]["shipped"]
    assert q_policy["action_agreement"] >= q_policy["post_training_action_agreement"]
    # The linear balancing rule sits on its decision boundary: after training only, its int8
    # model flips about one action in fourteen; fine-tuned, about one in twenty (the 8-bit input
    # alone flips 3.8%). Measured: 0.928 -> 0.952 (0.898 -> 0.952 with calibration episodes
    # played 16 at a time instead of 4).
    balance = report[CARTPOLE]["int8"]
    assert balance["fine_tuning"]["shipped"].startswith("fine_tuned")
    assert balance["action_agreement"] >= balance["post_training_action_agreement"] + 0.015
    for name in ("random_q_values", "random_lander"):
        int8 = report[name]["int8"]
        assert int8["action_agreement"] >= int8["post_training_action_agreement"] - 0.01, name


def test_the_default_precision_rule_needs_both_the_actions_and_the_return():
    from stages.policies.statistics import bootstrap_mean_interval
    from stages.pi_bundle.parity import default_precision

    # Ten CartPole episodes of a float policy that usually reaches the 200-step cap.
    returns = [200.0, 200.0, 187.0, 200.0, 164.0, 200.0, 200.0, 193.0, 200.0, 178.0]
    low, high = bootstrap_mean_interval(returns, resamples=2000, seed=0)
    assert 178 < low < 192.2 < high <= 200  # the mean, 192.2, and its 95% interval
    assert default_precision(0.995, 0.99, 190.0, (low, high))[0] == "int8"
    assert default_precision(0.99, 0.99, 192.2, (low, high))[0] == "int8"  # the target itself is enough
    choice, why = default_precision(0.9712, 0.99, 192.2, (low, high))
    assert choice == "float32" and "97.12%" in why and "below the 99% target" in why
    choice, why = default_precision(0.997, 0.99, 57.0, (low, high))  # keeps actions, loses the return
    assert choice == "float32" and "mean return 57 lies outside" in why
    assert default_precision(0.9, 0.99, 57.0, (low, high))[0] == "float32"
    # A float policy that always reaches the cap: int8 must too.
    assert default_precision(1.0, 0.99, 199.5, bootstrap_mean_interval([200.0] * 5, resamples=100, seed=0))[0] \
        == "float32"


def test_the_archive_holds_the_folder_and_is_reproducible(bundled, tmp_path):
    bundle, archive = bundled / "data/pi_bundle", bundled / "data/pi_bundle.tar.gz"
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
        assert [m.name for m in members] == sorted(m.name for m in members)
        for member in members:
            if member.isfile():
                assert tar.extractfile(member).read() == (bundle.parent / member.name).read_bytes()
        assert tar.getmember("pi_bundle/run_policy.py").mode == 0o755
    write_reproducible_tar_gz(bundle, tmp_path / "again.tar.gz", executables=frozenset({"run_policy.py"}))
    assert (tmp_path / "again.tar.gz").read_bytes() == archive.read_bytes()
    assert archive.read_bytes()[4:8] == b"\0\0\0\0"  # no date in the gzip header


def test_float32_matches_the_original_and_int8_agreement_is_measured(bundled):
    report = json.loads((bundled / "reports/pi_bundle/benchmark.json").read_text())
    for name, policy in report.items():
        assert policy["float32"]["observations"] == 500, name
        assert policy["float32"]["max_scaled_diff"] <= 1e-5, name
        assert policy["float32"]["action_agreement_without_ties"] == 1.0, name
        assert 0.0 <= policy["int8"]["action_agreement"] <= 1.0
        # A continuous action a few ulps away moves the lander a few ulps away: the same episodes,
        # returns equal to a few parts in a million. A discrete action is the original's exactly.
        original = policy["evaluation"]["original"]["mean"]
        assert policy["evaluation"]["float32"]["mean"] == (pytest.approx(original, rel=1e-4) if name == CONTINUOUS
                                                           else original), name
        for variant in ("original", "float32", "int8"):
            assert policy["latency"][variant]["median_wall_time_s"] > 0
    # This rule sits on its decision boundary (it balances by switching): int8 flips some choices.
    assert report[CARTPOLE]["int8"]["action_agreement"] >= 0.85
    assert report[CARTPOLE]["evaluation"]["original"]["mean"] >= 150  # the rule balances the pole
    metrics = json.loads((bundled / "reports/pi_bundle/metrics.json").read_text())
    assert metrics[CARTPOLE]["int8_meets_target"] is (metrics[CARTPOLE]["int8_action_agreement"] >= 0.99)
    rounding = metrics[CARTPOLE]["int8_input_rounding_agreement"]
    assert 0.5 <= rounding <= 1.0


def test_input_rounding_agreement_counts_the_choices_the_int8_input_grid_flips():
    from stages.pi_bundle.parity import input_rounding_agreement

    model = {"input": {"dtype": "int8", "scale": 0.1, "zero_point": 0},
             "input_normalization": {"center": [0.0], "scale": [1.0]}}
    observations = np.linspace(-1, 1, 2001, dtype=np.float32)[:, None]
    policy = lambda batch: (batch[:, 0] >= 0.33).astype(np.int64)  # noqa: E731
    # Rounded to the grid, 0.330 ... 0.349 become 0.3 and change action: 20 of 2001 observations.
    agreement = input_rounding_agreement(model["input_normalization"], model["input"], policy, observations,
                                         policy(observations))
    assert abs(agreement - (1 - 20 / 2001)) <= 1 / 2001
    on_grid = np.round(observations * 10) / 10
    assert input_rounding_agreement(model["input_normalization"], model["input"], policy, on_grid,
                                    policy(on_grid)) == 1.0
    # Integer observations (Atari frames) reach the int8 model as they are: nothing to measure.
    frames = {"input": {"dtype": "uint8", "scale": None, "zero_point": None}, "input_normalization": None}
    assert input_rounding_agreement(frames["input_normalization"], frames["input"], policy, observations,
                                    policy(observations)) is None


def test_atari_environments_lent_again_play_the_episodes_fresh_ones_play():
    """The stage builds an Atari policy's environments once and lends them to every later batch
    of episodes: the episodes must be exactly those of freshly built environments."""
    from types import SimpleNamespace

    from stages.policies.evaluation import evaluate_policy
    from stages.policies.index import make_policy_env
    from stages.pi_bundle.observations import episode_environments

    preprocessing = {"kind": "atari", "noop_max": 30, "frame_skip": 4, "screen_size": 84, "frame_stack": 4,
                     "max_episode_steps": 27000, "after_reset": {"action": "FIRE", "steps": 1},
                     "after_life_loss": {"action": "FIRE", "steps": 1}}
    entry = SimpleNamespace(env_id="BreakoutNoFrameskip-v4", preprocessing=preprocessing)
    # Actions that depend on what the policy sees: a different frame soon means different play.
    policy = lambda frames: (frames.reshape(len(frames), -1).sum(axis=1) // 7 % 4).astype(np.int64)  # noqa: E731
    seeds = [[5, 6, 7], [8, 9, 10], [5, 11, 12]]

    def play(make_env) -> list[tuple[list[float], list[int]]]:
        results = [evaluate_policy(entry.env_id, policy, batch, max_steps=120, make_env=make_env, progress=False)
                   for batch in seeds]
        return [(r.returns.tolist(), r.lengths.tolist()) for r in results]

    fresh = play(lambda: make_policy_env(entry))
    built = []
    with episode_environments(entry) as lend:
        def counting():
            env = lend()
            built.append(env.env)
            return env
        assert play(counting) == fresh
    assert len({id(env) for env in built}) == 3 and len(built) == 9  # three built, each lent three times
    with episode_environments(SimpleNamespace(preprocessing={})) as make_env:
        assert make_env is None  # other environments: evaluate_policy makes them itself


# --- the runner -------------------------------------------------------------------------------


def test_the_runner_acts_as_the_manifest_expects_without_tensorflow(bundled):
    bundle = bundled / "data/pi_bundle"
    for name, spec in manifest_of(bundle)["policies"].items():
        for precision, expected in spec["sample"]["expected_actions"].items():
            result = runner(bundle, "act", name, bundle / spec["sample"]["file"], "--precision", precision,
                            "--allow-unsafe-int8")
            assert result.returncode == 0, result.stderr
            assert printed_actions(result.stdout, expected) == expected, (name, precision)
            assert f"{name}: loaded the {precision} model models/{name}.{precision}.tflite" in result.stderr


def marked(bundle: Path, name: str, safe: bool, agreement: float) -> None:
    """Edit the manifest (it lists no checksum of its own) as if int8 had measured so."""
    manifest = manifest_of(bundle)
    spec = manifest["policies"][name]
    spec["default_precision"] = "int8" if safe else "float32"
    spec["default_reason"] = "as measured"
    spec["models"]["int8"]["safe"] = safe
    spec["models"]["int8"]["measured"]["action_agreement"] = agreement
    spec["models"]["int8"].pop("unsafe_reason", None)
    if not safe:
        spec["models"]["int8"]["unsafe_reason"] = "int8 chooses the original's action on 97.12% of ..."
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_the_runner_loads_the_default_precision_and_refuses_an_unsafe_int8_model(bundled, tmp_path):
    bundle = copy_of(bundled / "data/pi_bundle", tmp_path)
    spec = manifest_of(bundle)["policies"][CARTPOLE]
    samples, expected = bundle / spec["sample"]["file"], spec["sample"]["expected_actions"]

    marked(bundle, CARTPOLE, safe=False, agreement=0.9712)
    result = runner(bundle, "act", CARTPOLE, samples)  # the default: float32
    assert result.returncode == 0 and [int(a) for a in result.stdout.split()] == expected["float32"]
    assert f"{CARTPOLE}: loaded the float32 model" in result.stderr and "the manifest's default" in result.stderr
    refused = runner(bundle, "act", CARTPOLE, samples, "--precision", "int8")
    assert refused.returncode == EXIT_UNSAFE_MODEL and refused.stdout == ""
    assert f"policy {CARTPOLE}: the manifest marks its int8 model unsafe" in refused.stderr
    assert "action agreement with the float policy 97.12%" in refused.stderr
    assert "--allow-unsafe-int8" in refused.stderr
    insisted = runner(bundle, "act", CARTPOLE, samples, "--precision", "int8", "--allow-unsafe-int8")
    assert insisted.returncode == 0 and [int(a) for a in insisted.stdout.split()] == expected["int8"]
    assert f"{CARTPOLE}: loaded the int8 model" in insisted.stderr and "--allow-unsafe-int8" in insisted.stderr
    played = runner(bundle, "play", CARTPOLE, "--episodes", "1", "--precision", "int8")
    assert played.returncode == EXIT_UNSAFE_MODEL and "unsafe" in played.stderr

    marked(bundle, CARTPOLE, safe=True, agreement=0.9953)
    result = runner(bundle, "act", CARTPOLE, samples)  # the default: int8
    assert result.returncode == 0 and [int(a) for a in result.stdout.split()] == expected["int8"]
    assert f"{CARTPOLE}: loaded the int8 model" in result.stderr and "99.53%" in result.stderr
    result = runner(bundle, "act", CARTPOLE, samples, "--precision", "int8")
    assert result.returncode == 0 and "requested" in result.stderr
    listed = runner(bundle, "list")
    assert f"{CARTPOLE}: CartPole-v1" in listed.stdout and "default precision int8" in listed.stdout


def test_the_runner_plays_episodes(bundled):
    bundle = bundled / "data/pi_bundle"
    result = runner(bundle, "play", CARTPOLE, "--episodes", "2", "--seed", "10000")
    assert result.returncode == 0, result.stderr
    assert "episode 1 seed 10001 return" in result.stdout and "mean return" in result.stdout
    default = manifest_of(bundle)["policies"][CARTPOLE]["default_precision"]
    assert result.stdout.rstrip().endswith(f"({CARTPOLE}, {default})")
    # No episode is no mean return: refused, as a step cap of none is.
    for option, value in (("--episodes", "0"), ("--episodes", "-2"), ("--max-steps", "0")):
        refused = runner(bundle, "play", CARTPOLE, option, value)
        assert refused.returncode == EXIT_BAD_INPUT and refused.stdout == ""
        assert f"error: {option} {value}: at least 1 is needed" in refused.stderr


def test_a_continuous_action_agrees_within_a_tolerance_and_the_runner_plays_it(bundled):
    """SAC's kind: float32 parity as a tolerance on the action vector, int8 judged by the
    environment's action_tolerance (quantized after training), vectors in the manifest, played."""
    benchmark = json.loads((bundled / "reports/pi_bundle/benchmark.json").read_text())[CONTINUOUS]
    tolerance = bundle_settings([], Params.load(bundled / "params.yaml")).evaluation[
        "LunarLanderContinuous-v3"].action_tolerance
    assert benchmark["output"] == "continuous_action" and tolerance == 0.1
    assert benchmark["float32"]["action_tolerance"] == 1e-5 and benchmark["float32"]["max_abs_diff"] <= 1e-5
    assert benchmark["float32"]["action_agreement"] == 1.0 and benchmark["float32"]["ties"] == 0
    assert benchmark["int8"]["action_tolerance"] == tolerance and benchmark["int8"]["ties"] == 0
    # A random network: int8 within 0.1 of its action on most observations, not necessarily all.
    assert 0.5 <= benchmark["int8"]["action_agreement"] <= 1.0
    assert benchmark["int8"]["fine_tuning"]["applied"] is False
    assert "continuous action" in benchmark["int8"]["fine_tuning"]["why"]
    spec = manifest_of(bundled / "data/pi_bundle")["policies"][CONTINUOUS]
    assert spec["models"]["int8"]["measured"]["action_tolerance"] == tolerance
    assert f"within {tolerance:g} of the original's" in spec["default_reason"]
    for actions in spec["sample"]["expected_actions"].values():
        assert len(actions) == 8 and all(len(a) == 2 and all(-1 <= x <= 1 for x in a) for a in actions)
    played = runner(bundled / "data/pi_bundle", "play", CONTINUOUS, "--episodes", "2", "--max-steps", "50")
    assert played.returncode == 0, played.stderr
    assert "episode 1 seed 1 return" in played.stdout and "mean return" in played.stdout
    timed = runner(bundled / "data/pi_bundle", "time", CONTINUOUS, "--calls", "20")
    assert timed.returncode == 0 and f"within {tolerance:g}" in timed_models(timed.stdout)["int8"][2]


def test_continuous_actions_agree_within_the_tolerance_and_need_one():
    from types import SimpleNamespace

    from stages.pi_bundle.parity import parity, same_actions
    from stages.pi_bundle.policy import action_tolerances

    reference = np.array([[0.5, -0.5], [0.0, 1.0], [0.2, 0.2]], np.float32)
    actions = reference + np.array([[0.05, -0.05], [0.0, 0.11], [0.09, 0.0]], np.float32)
    assert same_actions(actions, reference, 0.1).tolist() == [True, False, True]
    assert same_actions(np.array([1, 0, 2]), np.array([1, 1, 2])).tolist() == [True, False, True]
    measured = parity(reference, reference, actions, actions, np.zeros(3, bool), 0.1)
    assert measured.action_agreement == 2 / 3 and measured.action_tolerance == 0.1
    assert "action_tolerance" not in parity(reference, reference, reference, reference, np.zeros(3, bool)).to_json()
    cfg = SimpleNamespace(float32_tolerance=1e-5)
    entry = SimpleNamespace(output="continuous_action", env_id="LunarLanderContinuous-v3", name="sac_x_s0")
    with pytest.raises(ParamError, match="LunarLanderContinuous-v3 has no action_tolerance: policy sac_x_s0"):
        action_tolerances(cfg, entry, SimpleNamespace(action_tolerance=None))
    tolerances = action_tolerances(cfg, entry, SimpleNamespace(action_tolerance=0.1))
    assert (tolerances.float32, tolerances.int8) == (1e-5, 0.1)
    discrete = action_tolerances(cfg, SimpleNamespace(output="q_values"), SimpleNamespace(action_tolerance=None))
    assert (discrete.float32, discrete.int8) == (None, None)


TIMED = re.compile(r"^  (float32|int8) +median +([\d.]+) us +p99 +([\d.]+) us +([\d.]+) KiB +\((.*)\)$")


def timed_models(output: str) -> dict[str, tuple[float, float, str]]:
    """precision -> (median us, p99 us, notes), from the runner's ``time`` command."""
    found = {}
    for line in output.splitlines():
        match = TIMED.match(line)
        if match:
            precision, median, p99, _, notes = match.groups()
            found[precision] = (float(median), float(p99), notes)
    return found


def test_the_runner_times_every_model_of_a_policy_without_tensorflow(bundled):
    bundle = bundled / "data/pi_bundle"
    spec = manifest_of(bundle)["policies"][CARTPOLE]
    result = runner(bundle, "time", CARTPOLE, "--calls", "50")
    assert result.returncode == 0, result.stderr
    timed = timed_models(result.stdout)
    assert set(timed) == {"float32", "int8"}, result.stdout
    for precision, (median, p99, notes) in timed.items():
        assert 0 < median <= p99, result.stdout
        agreement = spec["models"][precision]["measured"]["action_agreement"]
        assert f"action agreement {agreement:.2%}" in notes
        assert ("the default" in notes) == (spec["default_precision"] == precision)
    assert ("marked unsafe" in timed["int8"][2]) != spec["models"]["int8"]["safe"]
    refused = runner(bundle, "time", CARTPOLE, "--calls", "0")
    assert refused.returncode == EXIT_BAD_INPUT and "--calls 0" in refused.stderr


def test_the_latency_benchmark_times_the_originals_beside_the_bundle(bundled, monkeypatch, capsys):
    """benchmarks/pi_latency.py on the bundle of every kind of policy: three rows per policy."""
    from benchmarks import pi_latency

    monkeypatch.chdir(bundled)
    monkeypatch.setattr(sys, "argv", ["pi_latency", "--calls", "20"])
    pi_latency.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert {(row[0], row[1]) for row in rows} == {(name, variant) for name in POLICIES
                                                 for variant in ("original", "float32", "int8")}


def test_a_corrupted_or_missing_model_is_refused(bundled, tmp_path):
    bundle = copy_of(bundled / "data/pi_bundle", tmp_path)
    model = bundle / manifest_of(bundle)["policies"][CARTPOLE]["models"]["float32"]["file"]
    content = bytearray(model.read_bytes())
    content[len(content) // 2] ^= 0xFF
    model.write_bytes(bytes(content))
    result = runner(bundle, "act", CARTPOLE, bundle / f"observations/{CARTPOLE}.npy")
    assert result.returncode == EXIT_BAD_BUNDLE and "checksum mismatch" in result.stderr
    assert result.stdout == ""
    model.unlink()
    result = runner(bundle, "list")
    assert result.returncode == EXIT_BAD_BUNDLE and f"missing file {model.relative_to(bundle)}" in result.stderr


def test_a_manifest_naming_a_model_for_another_shape_is_refused(bundled, tmp_path):
    bundle = copy_of(bundled / "data/pi_bundle", tmp_path)
    manifest = manifest_of(bundle)
    lander = manifest["policies"]["random_lander"]["models"]["float32"]
    manifest["policies"][CARTPOLE]["models"]["float32"] = lander  # checksums still all correct
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = runner(bundle, "play", CARTPOLE, "--episodes", "1", "--precision", "float32")
    assert result.returncode == EXIT_BAD_BUNDLE
    assert "takes observations of shape (8,), but the manifest says (4,)" in result.stderr


def test_unknown_policies_and_pickled_observations_are_refused(bundled, tmp_path):
    bundle = bundled / "data/pi_bundle"
    result = runner(bundle, "act", "no_such_policy", bundle / f"observations/{CARTPOLE}.npy")
    assert result.returncode == EXIT_BAD_BUNDLE and "unknown policy 'no_such_policy'" in result.stderr
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"observation": 1}], dtype=object), allow_pickle=True)
    result = runner(bundle, "act", CARTPOLE, pickled)
    assert result.returncode == EXIT_BAD_INPUT and "pickles are refused" in result.stderr
    assert "holds Python objects (object), not numbers" in result.stderr
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 5), np.float32))
    result = runner(bundle, "act", CARTPOLE, wrong)
    assert result.returncode == EXIT_BAD_INPUT and "shape (5,)" in result.stderr
    # A file of another kind, and a truncated one, are named as what they are (not as pickles).
    as_json = tmp_path / "observations.json"
    as_json.write_text(json.dumps(np.zeros((3, 4)).tolist()))
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes((bundle / f"observations/{CARTPOLE}.npy").read_bytes()[:200])
    for path, problem in ((as_json, "is not a .npy file (it lacks NumPy's header): save the observations "
                                    "with numpy.save"),
                          (truncated, "is a damaged or truncated .npy file")):
        result = runner(bundle, "act", CARTPOLE, path)
        assert result.returncode == EXIT_BAD_INPUT and f"error: {path} {problem}" in result.stderr
        assert "pickle" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("edit, problem", [
    (lambda spec: spec.pop("models"), f"policy {CARTPOLE} lacks models"),
    (lambda spec: spec.pop("observation_shape"), f"policy {CARTPOLE} lacks observation_shape"),
    (lambda spec: spec["models"]["float32"].pop("file"), f"policy {CARTPOLE}: its float32 model lacks file"),
    (lambda spec: spec.update(models=[]), f"policy {CARTPOLE}: 'models' must map each precision to its model"),
])
def test_a_manifest_missing_what_the_runner_reads_is_refused_by_name(bundled, tmp_path, edit, problem):
    bundle = copy_of(bundled / "data/pi_bundle", tmp_path)
    manifest = manifest_of(bundle)
    edit(manifest["policies"][CARTPOLE])
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for command in (("list",), ("act", CARTPOLE, str(bundle / f"observations/{CARTPOLE}.npy"))):
        result = runner(bundle, *command)
        assert result.returncode == EXIT_BAD_BUNDLE, result.stderr
        assert problem in result.stderr and "the manifest is damaged or was edited" in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_the_bundle_ships_the_pipelines_own_runtime_and_the_runner_keeps_its_checks(bundled):
    """One contract: the bundle holds pi/policy_contract.py and pi/policy_runtime.py as they are,
    the pipeline plays Atari through the same classes, and the runner refuses what the pipeline
    refuses."""
    import pi.policy_contract as contract
    from stages.policies.index import make_policy_env

    bundle = bundled / "data/pi_bundle"
    for shipped in ("policy_runtime.py", "policy_contract.py"):
        assert (bundle / shipped).read_bytes() == (PI / shipped).read_bytes()
    assert not any(p.name.startswith("atari") for p in (REPO_ROOT / "stages/core").iterdir())
    prep = contract.preprocessing_description(frame_skip=4, screen_size=84, noop_max=30, frame_stack=4,
                                             max_episode_steps=60, after_reset={"action": "FIRE", "steps": 1},
                                             after_life_loss={"action": "FIRE", "steps": 1})
    from stages.policies.index import PolicyEntry

    entry = PolicyEntry(name="b", stage="s", env_id="BreakoutNoFrameskip-v4", model="m",
                        observation_shape=(84, 84, 4), observation_dtype="uint8", output="tf_agents_policy",
                        n_actions=4, preprocessing=prep)
    env, wrappers = make_policy_env(entry), []
    while hasattr(env, "env"):
        wrappers.append(type(env))
        env = env.env
    assert contract.AtariFrames in wrappers and contract.StartRule in wrappers
    # In the bundle, without TensorFlow: a frame-skipping id is refused as the pipeline refuses it.
    code = ("import sys; sys.modules['tensorflow'] = None; sys.path.insert(0, sys.argv[1]); "
            "import policy_runtime as r, json; "
            "r.make_atari_env('ALE/Breakout-v5', json.loads(sys.argv[2]))")
    result = subprocess.run([sys.executable, "-c", code, str(bundle), json.dumps(prep)],
                            capture_output=True, text=True, env=engine_env())
    assert result.returncode != 0 and "must not skip frames itself (use a NoFrameskip id)" in result.stderr


# --- the quick profile's own policies ---------------------------------------------------------


@pytest.mark.e2e
def test_fine_tuning_raises_the_int8_agreement_of_the_quick_profiles_policies(quick_run):
    """On the policies the quick profile trains (the shared quick run's bundle): every Keras
    policy's int8 model with discrete actions is fine-tuned, agreement rises on average, more
    policies reach the 99% target, and none loses more than a little (the choice is made on the
    distillation observations, not on these held-out ones). A continuous-action policy (SAC) is
    quantized after training only, and says so. Measured (150 steps from the float weights,
    held-out observations from 4 episodes at a time): mean gain 0.011, 5 -> 7 policies at the
    target, worst -0.002."""
    from stages.policies.index import load_index

    report = json.loads((quick_run / "reports/pi_bundle/benchmark.json").read_text())
    outputs = {name: entry.output for name, entry in load_index(quick_run / "data/policies").items()}
    continuous = {name: r["int8"] for name, r in report.items() if outputs[name] == "continuous_action"}
    assert continuous and all(not int8["fine_tuning"]["applied"] and "continuous action" in int8["fine_tuning"]["why"]
                              for int8 in continuous.values()), continuous
    keras = {name: r["int8"] for name, r in report.items()
             if "NoFrameskip" not in r["env_id"] and name not in continuous}  # not Atari
    assert len(keras) >= 12 and all(int8["fine_tuning"]["applied"] for int8 in keras.values()), {
        name: int8["fine_tuning"] for name, int8 in keras.items() if not int8["fine_tuning"]["applied"]}
    gains = {name: int8["action_agreement"] - int8["post_training_action_agreement"] for name, int8 in keras.items()}
    assert np.mean(list(gains.values())) >= 0.005, gains
    assert min(gains.values()) >= -0.02, gains
    target = 0.99
    before = sum(int8["post_training_action_agreement"] >= target for int8 in keras.values())
    after = sum(int8["action_agreement"] >= target for int8 in keras.values())
    assert after > before, (before, after)
    manifest = manifest_of(quick_run / "data/pi_bundle")
    # The Atari policies (TF-Agents Q-networks read back from their graphs): the pairwise models,
    # with the pairwise layer as it is and fine-tuned, are made and measured beside the
    # post-training one, and the one shipped keeps the held-out actions about as well.
    atari = {name: r["int8"] for name, r in report.items() if "NoFrameskip" in r["env_id"]}
    assert atari
    for name, int8 in atari.items():
        assert set(int8["fine_tuning"]["action_agreement_on_fine_tuning_observations"]) == {
            "post_training", "pairwise_output", "fine_tuned_pairwise_output"}, (name, int8["fine_tuning"])
        assert manifest["policies"][name]["models"]["int8"]["made_by"] == int8["fine_tuning"]["shipped"]
        assert int8["action_agreement"] >= int8["post_training_action_agreement"] - 0.02, (name, int8)
    for name, spec in manifest["policies"].items():
        assert spec["default_precision"] in ("float32", "int8"), name
        assert spec["models"]["int8"]["safe"] is (spec["default_precision"] == "int8"), name


# --- the stages ---------------------------------------------------------------------------------


def test_each_trainer_has_a_pi_stage_that_mirrors_it_and_pi_bundle_only_gathers():
    """pi_<trainer> has its trainer's foreach/matrix, a stage per training stage, which reads
    exactly that stage's exported policy folders (besides code), names them in its command and
    writes each one's conversion and its result file (committed to git); pi_bundle reads the
    conversions, not the policies."""
    from stages.core.dag import read_dag

    declarations = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    groups: dict[str, list] = {}
    for stage in read_dag(REPO_ROOT):
        groups.setdefault(stage.group, []).append(stage)
    trainers = [group for group, members in groups.items() if any(s.policies for s in members)]
    assert {"nn_policy", "pg_cartpole", "pg_lunarlander", "dqn", "atari_dqn", "a2c", "ppo", "sac"} <= set(trainers)
    for trainer in trainers:
        name = f"pi_{trainer}"
        assert name in declarations, f"{trainer} exports policies but has no {name}"
        for key in ("foreach", "matrix"):
            assert declarations[name].get(key) == declarations[trainer].get(key), (name, key)
        converters = {s.name.removeprefix(name): s for s in groups[name]}
        for trained in groups[trainer]:
            converter = converters.pop(trained.name.removeprefix(trainer))
            names = [Path(folder).name for folder in trained.policies]
            assert [d for d in converter.deps if not d.endswith(".py")] == trained.policies, converter.name
            argv = converter.argv  # --env ENV_ID [--env ENV_ID ...] POLICY...
            envs = [argv[i + 1] for i in range(0, len(argv) - 1, 2) if argv[i] == "--env"]
            assert converter.module == "stages.pi_bundle.policy" and argv[2 * len(envs):] == names, converter.name
            assert envs and {f"pi_bundle.evaluation.{env}" for env in envs} <= set(converter.param_keys), converter.name
            assert converter.outs == [*(f"data/pi_policies/{p}" for p in names),
                                      *(f"reports/pi_bundle/policies/{p}.json" for p in names)], converter.name
        assert not converters, f"{name} has stages no {trainer} stage matches: {sorted(converters)}"
        body = declarations[name].get("do", declarations[name])
        results = [out for out in body["outs"] if str(next(iter(out))).startswith("reports/")]
        assert results and all(next(iter(out.values())).get("cache") is False for out in results), name
    gathering = groups["pi_bundle"][0]
    assert not any(dep == "data/policies" or dep.startswith("data/policies/") for dep in gathering.deps)
    assert {"data/pi_policies", "reports/pi_bundle/policies"} <= set(gathering.deps)


def test_the_bundle_names_the_stage_of_a_policy_not_converted_yet(bundled, tmp_path):
    ws = Path(shutil.copytree(bundled, tmp_path / "ws", symlinks=True))
    (ws / "reports/pi_bundle/policies" / f"{CARTPOLE}.json").unlink()
    before = (ws / "data/pi_bundle.tar.gz").read_bytes()
    result = subprocess.run([sys.executable, "-m", "stages.pi_bundle"], cwd=ws, capture_output=True, text=True,
                            env=engine_env())
    assert result.returncode == 2, result.stderr
    assert f"policy {CARTPOLE} is not converted" in result.stderr and f"pi_{MAKER}" in result.stderr
    assert (ws / "data/pi_bundle.tar.gz").read_bytes() == before  # nothing written


# --- parameters -------------------------------------------------------------------------------


def test_overlapping_seed_ranges_are_refused():
    params = read_params_file(REPO_ROOT / "params.yaml")
    params["pi_bundle"]["parity"]["seed_start"] = params["pi_bundle"]["calibration"]["seed_start"] + 5
    with pytest.raises(ParamError, match="the calibration and parity seed ranges must not overlap"):
        bundle_settings([], Params(params))


# --- an emulated Raspberry Pi -----------------------------------------------------------------


@pytest.fixture
def emulated_root() -> Iterator[Path]:
    """An emulated Pi with the runner's requirements, emulation on while the test runs. Builds the
    root once (about 4 minutes, cached in /var/cache/rl-pipeline by requirements)."""
    from tests.emulated_pi import emulated_pi, emulation_problem

    problem = emulation_problem()
    if problem:
        pytest.skip(problem)
    with emulated_pi([PI / "requirements-pi.txt", PI / "requirements-pi-gymnasium.txt"]) as root:
        yield root


@pytest.mark.system
def test_the_bundle_runs_on_an_emulated_raspberry_pi(bundled, emulated_root):
    """Debian bookworm arm64 under qemu: same returns as here, the int8 models' expected actions,
    each model timed, the manifest's default precision loaded, an unsafe int8 model refused unless
    insisted on, and a corrupted model refused."""
    from tests.emulated_pi import run_in_root

    root = emulated_root
    bundle = bundled / "data/pi_bundle"
    play = ["play", CARTPOLE, "--episodes", "20", "--seed", "10000"]
    here = runner(bundle, *play)
    assert here.returncode == 0, here.stderr
    target = root / "opt/pi_bundle"
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(bundled / "data/pi_bundle.tar.gz") as tar:
        tar.extractall(root / "opt", filter="data")
    try:
        machine = run_in_root(root, ["python3", "-c", "import platform; print(platform.machine())"])
        assert machine.stdout.strip() == "aarch64", machine.stderr
        on_pi = run_in_root(root, ["python3", "/opt/pi_bundle/run_policy.py", *play])
        assert on_pi.returncode == 0, on_pi.stderr
        assert on_pi.stdout.splitlines()[:20] == here.stdout.splitlines()[:20]
        assert on_pi.stdout == here.stdout
        # The int8 models (fine-tuned ones included) act on aarch64 as they did here.
        for name, spec in manifest_of(target)["policies"].items():
            acted = run_in_root(root, ["python3", "/opt/pi_bundle/run_policy.py", "act", name,
                                       f"/opt/pi_bundle/{spec['sample']['file']}", "--precision", "int8",
                                       "--allow-unsafe-int8"])
            assert acted.returncode == 0, acted.stderr
            expected = spec["sample"]["expected_actions"]["int8"]
            assert printed_actions(acted.stdout, expected) == expected, name
        # Each precision timed on the emulated CPU: qemu's speed, not a Pi's; the command works.
        timed = run_in_root(root, ["python3", "/opt/pi_bundle/run_policy.py", "time", CARTPOLE, "--calls", "20"])
        assert timed.returncode == 0, timed.stderr
        assert set(timed_models(timed.stdout)) == {"float32", "int8"}, timed.stdout

        # The manifest's default precision, and its refusal of an int8 model it marks unsafe unless
        # the user insists, hold on aarch64 as here.
        spec = manifest_of(target)["policies"][CARTPOLE]
        samples, expected = f"/opt/pi_bundle/{spec['sample']['file']}", spec["sample"]["expected_actions"]
        act = ["python3", "/opt/pi_bundle/run_policy.py", "act", CARTPOLE, samples]
        marked(target, CARTPOLE, safe=False, agreement=0.9712)
        default = run_in_root(root, act)
        assert default.returncode == 0 and [int(a) for a in default.stdout.split()] == expected["float32"]
        assert f"{CARTPOLE}: loaded the float32 model" in default.stderr, default.stderr
        refused = run_in_root(root, [*act, "--precision", "int8"])
        assert refused.returncode == EXIT_UNSAFE_MODEL and refused.stdout == "", refused.stderr
        assert f"policy {CARTPOLE}: the manifest marks its int8 model unsafe" in refused.stderr
        insisted = run_in_root(root, [*act, "--precision", "int8", "--allow-unsafe-int8"])
        assert insisted.returncode == 0 and [int(a) for a in insisted.stdout.split()] == expected["int8"]
        marked(target, CARTPOLE, safe=True, agreement=0.9953)
        default = run_in_root(root, act)
        assert default.returncode == 0 and [int(a) for a in default.stdout.split()] == expected["int8"]
        assert f"{CARTPOLE}: loaded the int8 model" in default.stderr, default.stderr

        model = target / manifest_of(target)["policies"][CARTPOLE]["models"]["float32"]["file"]
        model.write_bytes(model.read_bytes()[:-1] + b"\0")
        refused = run_in_root(root, ["python3", "/opt/pi_bundle/run_policy.py", *play])
        assert refused.returncode == EXIT_BAD_BUNDLE and "checksum mismatch" in refused.stderr
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_runner_help_names_the_commands():
    result = subprocess.run([sys.executable, str(PI / "run_policy.py"), "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and all(c in result.stdout for c in ("list", "play", "act", "time"))
