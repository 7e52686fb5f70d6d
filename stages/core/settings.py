"""Typed settings: the blocks every experiment's settings are made of, and how params.yaml is read.

Each experiment declares its settings as pydantic models in its own package
(``stages/<name>/__init__.py``), beside the ``__main__.py`` that reads them: editing one
experiment's settings reruns only that experiment.

A bad value raises :class:`ParamError` naming the dotted key, the value found and what pydantic
says is allowed, so a typo stops the run with a sentence instead of a traceback an hour in.
Whole-file checks (every stage's settings, and what one stage's seeds mean for another's) live
in :mod:`pipeline.validation`, which the Snakefile runs before any job.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from stages.core.io import output_set
from stages.core.stage_lock import StageBusy, holding, stage_command

PARAMS_FILE = Path("params.yaml")


class InputError(ValueError):
    """Something the user gave is wrong (a parameter, a file, a policy): said in one sentence."""


class ParamError(InputError):
    """A parameter is missing, unknown or outside what its stage allows."""


class Block(BaseModel):
    """A group of settings: exactly these keys, each checked when read; read-only afterwards.

    Strict: ``true`` is not the integer 1 and ``"0.1"`` is not a number; YAML spells both out.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)


# --- values ------------------------------------------------------------------------------------

Count = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, description="a random seed: a non-negative integer")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Discount = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
Fps = Annotated[int, Field(ge=1, le=100, description="frames per second of a GIF")]
Activation = Literal["elu", "relu", "tanh", "selu"]
OptimizerName = Literal["adam", "nadam", "rmsprop", "sgd"]


def registered_env_id(value: str) -> str:
    """An environment id registered in Gymnasium (Atari ids come from ale-py)."""
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    if value not in gymnasium.envs.registry:
        raise ValueError("expected an environment id registered in Gymnasium "
                         "(e.g. 'CartPole-v1', 'LunarLander-v3', 'BreakoutNoFrameskip-v4')")
    return value


EnvId = Annotated[str, AfterValidator(registered_env_id),
                  Field(description="a Gymnasium environment id", examples=["CartPole-v1"])]


def env_family(family: str, why: str) -> Any:
    """An environment id of one family (``CartPole``: ``CartPole-v0``, ``CartPole-v1``)."""

    def check(value: str) -> str:
        if not value.startswith(f"{family}-"):
            raise ValueError(f"expected a {family} environment ({why})")
        return value

    return Annotated[str, AfterValidator(registered_env_id), AfterValidator(check),
                     Field(description=f"a {family} environment id ({why})")]


# --- shared blocks -----------------------------------------------------------------------------


class Network(Block):
    """Dense hidden layers between the observation and the policy's output."""

    hidden_units: list[Count] = Field(min_length=1)
    """Units of each hidden layer, input side first."""
    activation: Activation
    """Activation of the hidden layers."""


class Optimizer(Block):
    """A Keras optimizer by name, with its learning rate (other arguments: Keras' defaults)."""

    name: OptimizerName
    """The Keras optimizer."""
    learning_rate: PositiveFloat
    """Its learning rate."""


class Episodes(Block):
    """Episodes played one per seed: ``seed_start``, ``seed_start + 1``, ..."""

    episodes: Count
    """How many episodes (one seed each)."""
    seed_start: Seed

    @property
    def seeds(self) -> range:
        return range(self.seed_start, self.seed_start + self.episodes)


class Gif(Block):
    """One greedy episode of the trained policy, recorded as an animated GIF."""

    seed: Seed
    """The episode's environment seed."""
    fps: Fps


class Bootstrap(Block):
    """A percentile bootstrap with a fixed random state (scipy.stats.bootstrap)."""

    resamples: int = Field(ge=100)
    """Bootstrap resamples per interval."""
    seed: Seed


class SeededTraining(Block):
    """A training run's seeds: ``seed`` for weights and sampling, and a block of environment seeds.

    Training environment ``i`` first resets with ``env_seed_start + i``. A params section
    describes the section's own run (the book's seed 42); :meth:`for_seed` gives another training
    seed's run (see :func:`environment_seed_start`).
    """

    seed: Seed
    env_seed_start: Seed

    @property
    def environment_count(self) -> int:
        """How many environments (so, environment seeds) one run starts."""
        raise NotImplementedError

    @property
    def env_seeds(self) -> range:
        return range(self.env_seed_start, self.env_seed_start + self.environment_count)

    def for_seed(self, seed: int) -> dict[str, Any]:
        """This block's values for training seed ``seed``: only the seeds change."""
        start = environment_seed_start(self.env_seed_start, self.environment_count, self.seed, seed)
        return {**self.model_dump(), "seed": seed, "env_seed_start": start}


def environment_seed_start(section_start: int, environments: int, section_seed: int, seed: int) -> int:
    """First environment seed of training seed ``seed``'s run, in blocks of ``environments`` seeds.

    Training seed ``seed`` takes block ``seed XOR section_seed``, a one-to-one map that gives the
    section's own seed block 0: that run is exactly the section's single-seed run, and no two
    training seeds share an environment seed.
    """
    return section_start + (seed ^ section_seed) * environments


def ranges_overlap(a: range, b: range) -> bool:
    return a.start < b.stop and b.start < a.stop


def held_out(training: range, evaluation: range, what: str) -> None:
    """Raise when evaluation seeds overlap training seeds (for model validators)."""
    if ranges_overlap(training, evaluation):
        raise ValueError(f"the evaluation seeds {evaluation.start}..{evaluation.stop - 1} overlap the "
                         f"{what} {training.start}..{training.stop - 1}: evaluation must be held out")


class StageSettings(Block):
    """Settings of one stage run. ``training_seeds`` and ``environment_ids`` feed the whole-file
    checks (pipeline/validation.py): evaluation seeds held out from every training run, and
    bundle settings for every environment a policy plays."""

    def training_seeds(self) -> set[int]:
        """Every seed this run starts an environment or a generator from (none for analysis stages)."""
        return set()

    def environment_ids(self) -> set[str]:
        """The environments this run's policies play (its ``env_id``, where it has one)."""
        env_id = getattr(self, "env_id", None)
        return {env_id} if isinstance(env_id, str) else set()


class Pipeline(Block):
    """The keys every stage shares: the profile and the training seeds."""

    profile: Literal["full", "quick"]
    """``quick`` marks a preview run with tiny settings (profiles/quick.yaml)."""
    seeds: list[Seed] = Field(min_length=1)
    """Training seeds of every per-seed stage (dvc.yaml: one stage per seed)."""

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        # A field validator, so that the problem is reported at the key ``seeds``.
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            raise ValueError(f"seeds must be distinct, but {', '.join(map(str, repeated))} "
                             "repeats: DVC would silently merge the repeated ones into one stage")
        return seeds


# --- reading -----------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def read_params_file(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path} not found: run the stage from the pipeline's root directory")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamError(f"{path} is not valid YAML: {yaml_problem(error)}") from None
    if not isinstance(data, dict):
        raise ParamError(f"{path} must be a mapping of sections, got {type(data).__name__}")
    return data


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: where (line and column, from 1), what, and the construct it is in."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return str(error)
    text = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and start is not None:
        text += f" ({context} at line {start.line + 1}, column {start.column + 1})"
    return text


def dotted(parts: Iterable[Any]) -> str:
    """('mdp', 'q_value_iteration', 'discounts', 1) -> 'mdp.q_value_iteration.discounts[1]'."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str] | None:
    """The field names of the model found at ``loc`` inside ``model`` (None if not a model)."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
        else:
            args = getattr(annotation, "__args__", ())
            annotation = args[-1] if args else None
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return None


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> X (a nullable block)."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def describe(error: ValidationError, model: type[BaseModel], key: str) -> list[str]:
    """One sentence per problem: the dotted key, the value and what is allowed."""
    sentences = []
    for problem in error.errors(include_url=False):
        loc = [part for part in problem["loc"] if part not in ("function-after",)]
        where = dotted([*key.split("."), *loc]) if key else dotted(loc)
        parent = dotted([*key.split("."), *loc[:-1]]) if key else dotted(loc[:-1])
        kind, message = problem["type"], problem["msg"]
        if kind == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1]) or []
            sentences.append(f"{where} is not a known parameter; allowed keys in {parent}: "
                             f"{', '.join(allowed)}")
        elif kind == "missing":
            needed = _fields_at(model, loc[:-1]) or []
            sentences.append(f"{where} is missing; {parent} needs: {', '.join(needed)}")
        elif kind == "value_error" and isinstance(problem["input"], Mapping):
            sentences.append(f"{where} is not allowed: {message.removeprefix('Value error, ')}")
        else:
            sentences.append(f"{where} = {problem['input']!r} is not allowed: "
                             f"{message.removeprefix('Value error, ')}")
    return sentences


def validate(model: type[M], value: Any, key: str, path: str | Path = PARAMS_FILE) -> M:
    """``value`` (found at dotted ``key`` of ``path``) as ``model``, or a ParamError saying why not."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        problems = describe(error, model, key)
        raise ParamError(f"{path}: " + ("\n  ".join(problems) if len(problems) > 1 else problems[0])) from None


class Params:
    """params.yaml as one stage reads it: every read names its dotted key, so a bad value is
    reported where it is, and :attr:`read_keys` (what the stage read) can be held against the
    params that dvc.yaml declares for the stage."""

    def __init__(self, data: Mapping[str, Any], path: str | Path = PARAMS_FILE) -> None:
        self.data, self.path = data, Path(path)
        self.read_keys: list[str] = []

    @classmethod
    def load(cls, path: str | Path = PARAMS_FILE) -> Params:
        return cls(read_params_file(path), path)

    def raw(self, key: str) -> Any:
        """The value at dotted ``key``; a ParamError names the first part that is missing."""
        value: Any = self.data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(value, Mapping) or part not in value:
                where = ".".join(parts[:depth])
                known = ", ".join(map(str, value)) if isinstance(value, Mapping) else "none"
                raise ParamError(f"{self.path} has no {'section' if depth == 0 else 'entry'} "
                                 f"'{part}'{f' in {where}' if where else ''}; known: {known}")
            value = value[part]
        return value

    def read(self, model: type[M], key: str, *, without: Sequence[str] = ()) -> M:
        """The settings at ``key`` as ``model``; ``without``: sub-keys read separately."""
        value = self.raw(key)
        if without and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in without}
            self.read_keys += [f"{key}.{k}" for k in value]
        else:
            self.read_keys.append(key)
        return validate(model, value, key, self.path)

    def members(self, key: str) -> list[str]:
        """The entry names of a mapping (variants, configurations, games)."""
        value = self.raw(key)
        if not isinstance(value, Mapping):
            raise ParamError(f"{self.path}: {key} must be a mapping of named entries")
        return [str(name) for name in value]

    def pipeline(self, *, record: bool = False) -> Pipeline:
        """The keys every stage checks; ``record`` when the stage's output depends on them
        (a stage that only checks them does not declare them in dvc.yaml)."""
        if record:
            self.read_keys += list(Pipeline.model_fields)
        return validate(Pipeline, {k: self.data[k] for k in Pipeline.model_fields if k in self.data},
                        "", self.path)


def check_training_seed(params: Params, seed: int) -> None:
    """A stage's ``--seed`` must be one of params.yaml's ``seeds`` (the stages dvc.yaml makes)."""
    seeds = params.pipeline().seeds
    if seed not in seeds:
        raise ParamError(f"--seed {seed}: not a training seed of {params.path} (seeds: {seeds})")


def seeded(model: type[M], params: Params, key: str, seed: int | None, *,
           block: str | None = "training", without: Sequence[str] = ()) -> M:
    """A per-seed section for training seed ``seed`` (None: the section's own seed).

    The seed must be one of params.yaml's ``seeds``. With ``block``, the run's environment seeds
    move to the seed's own block (:meth:`SeededTraining.for_seed`); without, the section's
    ``seed`` is replaced. The model's validators (held-out evaluation seeds) run again.
    """
    settings = params.read(model, key, without=without)
    if seed is None:
        return settings
    check_training_seed(params, seed)
    values = settings.model_dump()
    if block is None:
        values["seed"] = seed
    else:
        values[block] = getattr(settings, block).for_seed(seed)
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problems = describe(error, model, key)
        raise ParamError(f"{params.path}: seeds: training seed {seed} is not allowed for {key}: "
                         + "; ".join(problems)) from None


# --- the command line --------------------------------------------------------------------------


def argument_parser(description: str, *, member: str | None = None, choices: Sequence[str] = (),
                    seed: bool = False) -> argparse.ArgumentParser:
    """A stage's command line: ``--<member> NAME`` (a variant, configuration or game) and/or ``--seed S``."""
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    if member:
        parser.add_argument(f"--{member}", required=True, help=f"a {member} of params.yaml"
                            + (f" ({', '.join(choices)})" if choices else ""))
    if seed:
        parser.add_argument("--seed", type=int, default=None,
                            help="a training seed of params.yaml's seeds (default: the section's own)")
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse, turning argparse's exit into a ParamError (the Snakefile checks every stage's command)."""
    try:
        return parser.parse_args(list(argv))
    except SystemExit:
        raise ParamError(f"bad arguments {' '.join(argv)!r}: {parser.format_usage().strip()}") from None


def member_of(params: Params, key: str, name: str, what: str) -> str:
    names = params.members(key)
    if name not in names:
        raise ParamError(f"{params.path}: {key} has no {what} '{name}'; known: {', '.join(names)}")
    return name


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main() after the shared checks; bad input exits with status 2 and one clear
    message. A second run of the stage in the workspace stops with status 75, naming the first
    (stages/core/stage_lock.py). The outputs replace the previous ones together once main()
    returns (stages/core/io.py): a stage that fails or is killed leaves the previous run's whole."""
    spec = main.__globals__.get("__spec__")
    module = spec.name.removesuffix(".__main__") if spec else main.__module__
    try:
        Params.load().pipeline()
        with holding(stage_command(module, sys.argv[1:])), output_set():
            main()
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except StageBusy as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(StageBusy.exit_status)
