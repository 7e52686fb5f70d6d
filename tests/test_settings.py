"""Typed settings: every stage's own models, the whole-file check, errors that name the key, the
JSON Schema, and settings that read exactly what dvc.yaml declares."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
import yaml

from stages.core.dag import dimension_params, gathered_folders, read_dag
from stages.core.settings import ParamError, Params, environment_seed_start
from pipeline.validation import SCHEMA_FILE, schema_text, stage_package, validate_pipeline
from pipeline.workspace import REPO_ROOT, create_workspace, engine_env, merge
from tests.conftest import edited_params, repo_stages


def test_repository_params_are_valid_for_every_stage(repo_root):
    runs = validate_pipeline(repo_stages(), repo_root / "params.yaml")
    assert len(runs) == len(repo_stages()) and "dqn@double_dqn-0" in runs


def test_the_quick_profile_is_valid_for_its_own_stages(tmp_path):
    quick = create_workspace(tmp_path / "quick", profile="quick")
    stages = read_dag(quick)
    # The training seeds' stages run at the profile's two seeds; the Atari recipes' runs keep their
    # own seeds (atari_dqn.runs, which a profile can shrink but not drop).
    runs = "atari_dqn_recipes"
    assert {s.seed for s in stages if s.seed is not None and not s.group.endswith(runs)} == {42, 0}
    assert {s.seed for s in stages if s.group == runs} == {0, 1, 2}
    validate_pipeline(stages, quick / "params.yaml")
    # The profile's "*" reached every variant and configuration, anchors and comments kept.
    text = (quick / "params.yaml").read_text()
    params = yaml.safe_load(text)
    assert {v["episodes"] for v in params["dqn"]["variants"].values()} == {30}
    assert {c["training"]["iterations"] for c in params["pg_lunarlander"].values()} == {2}
    assert "<<: *book_dqn" in text and "# sampled runs of a four-state Markov chain" in text


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["markov_chain"].update(runs=-3),
     "markov_chain.runs = -3 is not allowed: Input should be greater than or equal to 1"),
    (lambda d: d["markov_chain"].update(runs="ten"), "markov_chain.runs = 'ten' is not allowed"),
    (lambda d: d["markov_chain"].update(runs=True), "markov_chain.runs = True is not allowed"),
    (lambda d: d["mdp"]["q_value_iteration"].update(discounts=[0.9, 1.5]),
     "mdp.q_value_iteration.discounts[1] = 1.5 is not allowed: Input should be less than 1"),
    (lambda d: d["cartpole_basics"].update(env_id="CartPole-v9"),
     "cartpole_basics.env_id = 'CartPole-v9' is not allowed: expected an environment id registered"),
    (lambda d: d["nn_policy"].update(env_id="LunarLander-v3"),
     "nn_policy.env_id = 'LunarLander-v3' is not allowed: expected a CartPole environment"),
    (lambda d: d["cartpole_basics"].update(episods=10),
     "cartpole_basics.episods is not a known parameter; allowed keys in cartpole_basics: env_id, seed"),
    (lambda d: d["cartpole_basics"].pop("max_steps"), "cartpole_basics.max_steps is missing"),
    (lambda d: d.pop("mdp"), "has no section 'mdp'"),
    (lambda d: d["mdp"]["q_learning"].update(discount=0.8), "q_learning.discount must be one of"),
    (lambda d: d["markov_chain"].update(transition_matrix=[[0.5, 0.4], [0.0, 1.0]]), "rows summing to 1"),
    (lambda d: d["mdp"]["q_learning"].update(learning_rate=float("nan")),
     "mdp.q_learning.learning_rate = nan is not allowed"),
    (lambda d: d["dqn"]["variants"]["double_dqn"].update(target_update_episodes=None),
     "dqn.variants.double_dqn is not allowed: double Q-learning needs a target network"),
    (lambda d: d["pg_lunarlander"]["solve"]["training"].update(discount=1.5),
     "pg_lunarlander.solve.training.discount = 1.5 is not allowed"),
    (lambda d: d["atari_dqn"]["games"]["space_invaders"]["after_reset"].update(action="UP"),
     "SpaceInvadersNoFrameskip-v4 has no action 'UP'"),
    (lambda d: d["pi_bundle"]["parity"].update(seed_start=200005),
     "the calibration and parity seed ranges must not overlap"),
    (lambda d: d["evaluate"].update(seed_start=40, episodes=10),
     "evaluate.seed_start = 40 is not allowed: the evaluation seeds 40..49 overlap the training seeds of nn_policy@42"),
    (lambda d: d.update(mdpp={}), "'mdpp' is not a known section"),
    (lambda d: d.update(seeds=[42, 42]), "seeds = [42, 42] is not allowed: seeds must be distinct, but 42 repeats"),
    (lambda d: d["pi_bundle"]["evaluation"].pop("LunarLander-v3"),
     "pi_bundle.evaluation has no entry for LunarLander-v3"),  # said by the first stage that reads it
])
def test_a_bad_value_names_its_key_its_value_and_what_is_allowed(tmp_path, edit, message):
    path = edited_params(tmp_path, edit)
    with pytest.raises(ParamError) as error:
        validate_pipeline(repo_stages(), path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_settings_are_typed_and_read_only(repo_root):
    from stages.mdp import settings

    cfg = settings([], Params.load(repo_root / "params.yaml"))
    assert cfg.q_learning.transitions == 10000 and cfg.q_value_iteration.discounts == [0.9, 0.95]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.q_learning.transitions = 5


def test_a_training_seed_moves_the_environments_to_a_block_of_its_own(repo_root):
    from stages.nn_policy import settings

    params = Params.load(repo_root / "params.yaml")
    book = settings([], params)
    assert (book.training.seed, book.training.env_seed_start) == (42, 0)
    runs = [settings(["--seed", str(seed)], params) for seed in (42, 0, 1, 2, 3)]
    blocks = [set(run.training.env_seeds) for run in runs]
    assert runs[0] == book and all(not (a & b) for i, a in enumerate(blocks) for b in blocks[i + 1:])
    assert environment_seed_start(0, 50, 42, 226) == 10000  # nn_policy's evaluation seeds ...
    with pytest.raises(ParamError, match="--seed 7: not a training seed"):
        settings(["--seed", "7"], params)


def test_a_seed_whose_environments_meet_the_evaluation_seeds_is_refused(tmp_path):
    # Seed 226 (block 226 XOR 42 = 200) would train nn_policy on environments 10000..10049.
    path = edited_params(tmp_path, lambda p: p.update(seeds=[42, 226]))
    with pytest.raises(ParamError, match="training seed 226 is not allowed for nn_policy"):
        validate_pipeline(read_dag(path.parent), path)


def test_a_stage_refuses_repeated_seeds_whichever_engine_starts_it(tmp_path):
    """The stages check what every stage shares (run_stage), so dvc repro refuses what the
    Snakefile refuses, even where DVC's matrix would merge the repeated seed into one stage."""
    edited_params(tmp_path, lambda p: p.update(seeds=[42, 0, 0]))
    env = {**engine_env(), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-m", "stages.markov_chain"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "params.yaml: seeds = [42, 0, 0] is not allowed: seeds must be distinct, but 0 repeats" in result.stderr
    assert not (tmp_path / "reports").exists()


BROKEN_YAML_LINE = "  runs: [5\n"  # an unclosed flow sequence: the next line's key is the error


def test_a_yaml_syntax_error_is_named_by_its_line_whichever_engine_reads_it(tmp_path):
    """Snakemake (which reads the DAG through DVC's parser), a stage as DVC starts it, and the
    whole-file check all name the line and column of a syntax error in params.yaml."""
    path = edited_params(tmp_path, lambda p: None)
    lines = (REPO_ROOT / "params.yaml").read_text().splitlines(keepends=True)
    runs = next(i for i, line in enumerate(lines) if line.startswith("  runs: "))  # markov_chain.runs
    lines[runs] = BROKEN_YAML_LINE
    path.write_text("".join(lines))
    where = f"params.yaml is not valid YAML: line {runs + 2}, column "
    problem = f"expected ',' or ']', but got ':' (while parsing a flow sequence at line {runs + 1}, column 9)"
    shutil.copy(REPO_ROOT / "Snakefile", tmp_path)  # beside dvc.yaml, as in a workspace: the DAG is read there
    env = {**engine_env(), "PYTHONPATH": str(REPO_ROOT)}
    for command in ([str(Path(sys.executable).parent / "snakemake"), "--cores", "1", "--dry-run"],
                    [sys.executable, "-m", "stages.markov_chain"],
                    [sys.executable, "-m", "pipeline.validation"]):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode != 0, command
        assert where in result.stdout + result.stderr and problem in result.stdout + result.stderr, command
    assert not (tmp_path / "reports").exists()


def test_every_stage_reads_exactly_the_params_dvc_yaml_declares(repo_root):
    """A stage may read only what DVC tracks for it, and declares nothing it does not read.
    Gathering stages (a folder of other stages' outputs) also depend on the lists that decide
    which stages exist."""
    stages = repo_stages()
    dimensions = set(dimension_params(yaml.safe_load((repo_root / "dvc.yaml").read_text())))
    for stage in stages:
        params = Params.load(repo_root / "params.yaml")
        stage_package(stage).settings(stage.argv, params)
        expected = set(params.read_keys) | (dimensions if gathered_folders(stage, stages) else set())
        assert set(stage.param_keys) == expected, stage.name


def test_the_json_schema_of_params_yaml_is_current(repo_root):
    committed = (repo_root / SCHEMA_FILE).read_text()
    assert committed == schema_text(repo_stages()), \
        "params.schema.json is stale: python -m pipeline.validation --write-schema"
    schema = json.loads(committed)
    assert {"profile", "seeds", "dqn", "atari_dqn", "pg_lunarlander"} <= set(schema["properties"])
    variant = schema["$defs"]["Variant"]["properties"]
    assert "Double Q-learning" in variant["double"]["description"]
    assert (repo_root / "params.yaml").read_text().startswith("# yaml-language-server: $schema=params.schema.json")


def test_a_profile_with_an_unknown_key_is_refused_and_a_star_reaches_every_entry():
    with pytest.raises(KeyError, match="mdp.q_learning.transitionz"):
        merge({"mdp": {"q_learning": {"transitions": 1}}}, {"mdp": {"q_learning": {"transitionz": 2}}})
    merged = merge({"v": {"a": {"n": 1, "m": 1}, "b": {"n": 2, "m": 2}}}, {"v": {"*": {"n": 0}, "b": {"m": 5}}})
    assert merged == {"v": {"a": {"n": 0, "m": 1}, "b": {"n": 0, "m": 5}}}


def test_stage_settings_packages_do_not_import_tensorflow(repo_root):
    """The Snakefile imports every stage's settings before any job: they must stay light."""
    modules = sorted({stage.module for stage in repo_stages()})
    code = ("import sys, importlib\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(n for n in ('tensorflow', 'tf_keras', 'tf_agents') if n in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_every_setting_says_what_it_is():
    """Each field of every stage's settings (and of the shared blocks) has a description: it is
    what an editor shows from params.schema.json."""
    import importlib
    import inspect

    from pydantic import BaseModel, RootModel

    modules = {"stages.core.settings", "stages.policy_gradient.settings",
               "stages.tf_agents_kit.settings", *(stage.module for stage in repo_stages())}
    undocumented = []
    for name in sorted(modules):
        module = importlib.import_module(name)
        for model in vars(module).values():
            # A section that maps names to settings (a RootModel) has one field, ``root``, the
            # mapping itself: its entries' settings are the ones described. (Its parameterized
            # base, ``RootModel[dict[str, Settings]]``, shows up in the module once built there.)
            if (inspect.isclass(model) and issubclass(model, BaseModel) and model.__module__ == name
                    and not issubclass(model, RootModel)):
                undocumented += [f"{name}.{model.__name__}.{field}" for field, info in model.model_fields.items()
                                 if field in model.__annotations__ and not info.description]
    assert undocumented == []


def _project(folder: Path) -> Path:
    """A tiny project (git repository) with a params.yaml and two profiles: one good, one with a typo."""
    (folder / "profiles").mkdir(parents=True)
    (folder / "params.yaml").write_text("profile: full\nmdp:\n  runs: 10  # kept\n")
    (folder / "profiles/quick.yaml").write_text("profile: quick\nmdp:\n  runs: 2\n")
    (folder / "profiles/typo.yaml").write_text("profile: quick\nmdp:\n  runz: 2\n")
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    return folder


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("profile, problem", [
    ("quik", "no profile 'quik'"),
    ("typo", "profile sets mdp.runz, which params.yaml does not have"),
])
def test_a_bad_profile_creates_nothing_and_the_corrected_command_then_works(tmp_path, profile, problem):
    from pipeline import workspace

    source, parent = _project(tmp_path / "project"), tmp_path / "workspaces"
    parent.mkdir()
    with pytest.raises((FileNotFoundError, KeyError), match=problem):
        workspace.create_workspace(parent / "preview", profile, source=source)
    assert _left_in(parent) == []
    # The command line says the same in one line (exit status 2), and leaves nothing either.
    result = subprocess.run([sys.executable, "-m", "pipeline.workspace", "--profile", "quik",
                             "--dir", str(parent / "preview"), "--engine", "none"],
                            cwd=REPO_ROOT, env=engine_env(), capture_output=True, text=True)
    assert result.returncode == 2 and "error: no profile 'quik'" in result.stderr
    assert "Traceback" not in result.stderr and _left_in(parent) == []
    made = workspace.create_workspace(parent / "preview", "quick", source=source)
    assert yaml.safe_load((made / "params.yaml").read_text()) == {"profile": "quick", "mdp": {"runs": 2}}
    assert _left_in(parent) == ["preview"]


def test_a_workspace_build_that_fails_midway_leaves_no_folder(tmp_path, monkeypatch):
    """The fault: a pre-commit hook that refuses the workspace's first commit (the last step);
    and a build killed earlier, whose temporary folder the next build removes."""
    from pipeline import workspace

    source, parent = _project(tmp_path / "project"), tmp_path / "workspaces"
    template = tmp_path / "template"
    (template / "hooks").mkdir(parents=True)
    (template / "hooks/pre-commit").write_text("#!/bin/sh\nexit 1\n")
    (template / "hooks/pre-commit").chmod(0o755)
    monkeypatch.setenv("GIT_TEMPLATE_DIR", str(template))
    with pytest.raises(subprocess.CalledProcessError):
        workspace.create_workspace(parent / "preview", "quick", source=source)
    assert _left_in(parent) == []
    monkeypatch.delenv("GIT_TEMPLATE_DIR")

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    killed = parent / f".preview.tmp-{gone.stdout.strip()}"
    (killed / "profiles").mkdir(parents=True)
    workspace.create_workspace(parent / "preview", "quick", source=source)
    assert _left_in(parent) == ["preview"]
