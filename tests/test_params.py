"""Parameter validation: a bad value is refused with its dotted key and what is allowed."""

from pathlib import Path

import pytest
import yaml

from stages.common.params import ParamError, integer, list_of, number, section
from stages.common.workspace import merge
from stages.settings import SCHEMA, load_params, validate_params_file


def write_params(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    edit(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repository_params_and_quick_profile_are_valid(repo_root):
    validate_params_file(repo_root / "params.yaml")
    quick = merge(yaml.safe_load((repo_root / "params.yaml").read_text()),
                  yaml.safe_load((repo_root / "profiles" / "quick.yaml").read_text()))
    for name, validator in SCHEMA.items():
        validator(quick[name], name)


@pytest.mark.parametrize("edit, key, allowed", [
    (lambda d: d["markov_chain"].update(runs=-3), "markov_chain.runs", "an integer >= 1"),
    (lambda d: d["markov_chain"].update(runs="ten"), "markov_chain.runs", "an integer >= 1"),
    (lambda d: d["mdp"]["q_value_iteration"].update(discounts=[0.9, 1.5]),
     "mdp.q_value_iteration.discounts[1]", "> 0.0 and < 1.0"),
    (lambda d: d["cartpole_basics"].update(env_id="CartPole-v9"), "cartpole_basics.env_id",
     "registered in Gymnasium"),
    (lambda d: d["cartpole_basics"].update(episods=10), "cartpole_basics.episods", "allowed keys"),
    (lambda d: d["cartpole_basics"].pop("max_steps"), "cartpole_basics.max_steps", "is missing"),
    (lambda d: d.pop("mdp"), "no section 'mdp'", ""),
    (lambda d: d["mdp"]["q_learning"].update(discount=0.8), "q_learning.discount must be one of", ""),
    (lambda d: d["markov_chain"].update(transition_matrix=[[0.5, 0.4], [0.0, 1.0]]),
     "rows summing to 1", ""),
])
def test_bad_value_names_the_key_and_what_is_allowed(tmp_path, edit, key, allowed):
    path = write_params(tmp_path, edit)
    with pytest.raises(ParamError) as error:
        validate_params_file(path)
    assert key in str(error.value)
    assert allowed in str(error.value)
    assert str(path) in str(error.value)


def test_unknown_section_is_refused(tmp_path):
    path = write_params(tmp_path, lambda d: d.update(mdpp={}))
    with pytest.raises(ParamError, match="'mdpp' is not a known section"):
        validate_params_file(path)


def test_load_params_returns_attribute_access(repo_root):
    cfg = load_params("mdp", repo_root / "params.yaml")
    assert cfg.q_learning.transitions == 10000
    assert cfg.q_value_iteration.discounts == [0.9, 0.95]


def test_validators_reject_booleans_and_non_finite_numbers():
    with pytest.raises(ParamError):
        integer()(True, "k")
    with pytest.raises(ParamError):
        number()(float("nan"), "k")
    with pytest.raises(ParamError, match=r"k\[1\]"):
        list_of(integer(minimum=0))([1, -1], "k")
    with pytest.raises(ParamError, match="k.a is missing"):
        section({"a": integer()})({}, "k")


def test_profile_with_an_unknown_key_is_refused():
    with pytest.raises(KeyError, match="mdp.q_learning.transitionz"):
        merge({"mdp": {"q_learning": {"transitions": 1}}}, {"mdp": {"q_learning": {"transitionz": 2}}})
