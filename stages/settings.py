"""What every section of params.yaml may hold: the one schema for the whole pipeline.

Stages load their section with :func:`load_params`; the Snakefile validates the whole file with
:func:`validate_params_file` before it schedules any job, so a bad value never costs an output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from stages.common.params import (
    PARAMS_FILE,
    ParamError,
    Validator,
    boolean,
    gymnasium_env_id,
    integer,
    list_of,
    mapping_of,
    nullable,
    number,
    one_of,
    read_params_file,
    section,
    validate_all,
    validate_section,
)

_PROBABILITY = number(minimum=0.0, maximum=1.0)
_DISCOUNT = number(minimum=0.0, maximum=1.0, open_min=True, open_max=True)
_SEED = integer(minimum=0)
_COUNT = integer(minimum=1)
_ACTIVATION = one_of("elu", "relu", "tanh", "selu")
_OPTIMIZER = one_of("adam", "nadam", "rmsprop", "sgd")
_LEARNING_RATE = number(minimum=0.0, open_min=True)
_GIF_FPS = integer(minimum=1, maximum=100)
_EPSILON_DECAYS = ("epsilon_end must not exceed epsilon_start",
                   lambda c: c.epsilon_end <= c.epsilon_start)


def _is_stochastic_matrix(rows: list[list[float]]) -> bool:
    return all(len(row) == len(rows) and abs(sum(row) - 1.0) < 1e-9 for row in rows)


def _mdp_shapes_agree(cfg: SimpleNamespace) -> bool:
    """Rewards exist exactly where transitions do, and every row covers every next state."""
    n_states = len(cfg.transition_probabilities)
    for probs_by_action, rewards_by_action in zip(cfg.transition_probabilities, cfg.rewards):
        if len(probs_by_action) != len(rewards_by_action):
            return False
        for probs, rewards in zip(probs_by_action, rewards_by_action):
            if (probs is None) != (rewards is None):
                return False
            if probs is not None and (len(probs) != n_states or len(rewards) != n_states
                                      or abs(sum(probs) - 1.0) > 1e-9):
                return False
    return len(cfg.transition_probabilities) == len(cfg.rewards)


def _evaluation_seeds_avoid_training(cfg: SimpleNamespace) -> bool:
    evaluation = cfg.evaluation
    return not evaluation.seed_start <= cfg.seed < evaluation.seed_start + evaluation.episodes


_DQN_VARIANT = section(
    {
        "episodes": _COUNT,
        "max_steps": _COUNT,
        "learn_every": one_of("step", "episode"),
        "warmup_episodes": integer(minimum=0),
        "epsilon_decay_episodes": _COUNT,
        "epsilon_min": _PROBABILITY,
        "replay_capacity": _COUNT,
        "batch_size": _COUNT,
        "discount": _DISCOUNT,
        "hidden_units": list_of(_COUNT),
        "learning_rate": _LEARNING_RATE,
        "loss": one_of("mse", "huber"),
        "dueling": boolean(),
        "double": boolean(),
        "target_update_episodes": nullable(
            _COUNT, "no target network: targets come from the online network"),
        "prioritized_replay": nullable(
            section({
                "alpha": number(minimum=0.0, maximum=1.0),
                "beta_start": _PROBABILITY,
                "beta_end": _PROBABILITY,
                "priority_offset": number(minimum=0.0, open_min=True),
            }, checks=[("beta_start must not exceed beta_end (beta anneals up to full correction)",
                        lambda c: c.beta_start <= c.beta_end)]),
            "uniform sampling"),
    },
    checks=[("double Q-learning needs a target network: set target_update_episodes",
             lambda c: not c.double or c.target_update_episodes is not None),
            ("warmup_episodes must be below episodes (no learning would happen)",
             lambda c: c.warmup_episodes < c.episodes)],
)


# Every action name the Arcade Learning Environment knows; each game has a subset.
ATARI_ACTIONS = ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT",
                 "DOWNLEFT", "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE",
                 "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE")
_FORCED_STEPS = section({"action": one_of(*ATARI_ACTIONS), "steps": integer(minimum=0)})


def _game_has_the_actions(game: SimpleNamespace) -> bool:
    from stages.common.atari import AtariSetupError, check_game

    try:
        check_game(game.env_id, [game.after_reset.action, game.after_life_loss.action])
    except AtariSetupError:
        return False
    return True


_ATARI_GAME = section(
    {
        "env_id": gymnasium_env_id(),
        "after_reset": _FORCED_STEPS,        # played for the agent after a reset ...
        "after_life_loss": _FORCED_STEPS,    # ... and after each lost life
    },
    checks=[("env_id must be an Atari game whose ROM is installed and which has the actions "
             "named in after_reset and after_life_loss", _game_has_the_actions)],
)


def _evaluation_seeds_are_unseen(cfg: SimpleNamespace) -> bool:
    seeds = range(cfg.evaluation.seed_start, cfg.evaluation.seed_start + cfg.evaluation.episodes)
    return cfg.training.seed not in seeds


def _every_state_has_an_action(cfg: SimpleNamespace) -> bool:
    return all(any(p is not None for p in actions) for actions in cfg.transition_probabilities)


def _ranges_disjoint(start_a: int, count_a: int, start_b: int, count_b: int) -> bool:
    return start_a + count_a <= start_b or start_b + count_b <= start_a


def _held_out(count_field: str) -> tuple[str, Callable[[SimpleNamespace], bool]]:
    """Evaluation seeds disjoint from the seeds the training environments start from."""
    return (f"evaluation seeds eval_seed_start .. eval_seed_start + eval_episodes - 1 must not "
            f"overlap the training seeds env_seed_start .. env_seed_start + {count_field} - 1",
            lambda c: _ranges_disjoint(c.eval_seed_start, c.eval_episodes, c.env_seed_start,
                                       getattr(c, count_field)))


def _distinct_seeds(value: object, key: str) -> list[int]:
    seeds = list_of(_SEED)(value, key)
    if len(set(seeds)) != len(seeds):
        raise ParamError(f"{key} = {value!r} is not allowed: expected distinct seeds")
    return seeds


def _env_family(prefix: str) -> tuple[str, Callable[[SimpleNamespace], bool]]:
    return (f"env_id must be a {prefix} environment", lambda c: c.env_id.startswith(f"{prefix}-"))


def _reinforce(env_family: str) -> Validator:
    """A REINFORCE configuration (SPEC 3 on CartPole, SPEC 11 on LunarLander)."""
    return section(
        {
            "env_id": gymnasium_env_id(),
            "hidden_units": list_of(_COUNT),
            "activation": _ACTIVATION,
            "iterations": _COUNT,
            "episodes_per_iteration": _COUNT,
            "max_steps": _COUNT,
            "discount": _DISCOUNT,
            "optimizer": _OPTIMIZER,
            "learning_rate": _LEARNING_RATE,
            "entropy_coefficient": number(minimum=0.0),
            "seed": _SEED,
            "env_seed_start": _SEED,
            "eval_episodes": _COUNT,
            "eval_seed_start": _SEED,
            "gif_seed": _SEED,
            "gif_fps": _GIF_FPS,
        },
        checks=[_env_family(env_family), _held_out("episodes_per_iteration")],
    )


def training_seeds(params: dict[str, SimpleNamespace]) -> dict[str, set[int]]:
    """Every seed each training run starts an environment or a generator from, by run.

    Per-seed sections (PER_SEED_SECTIONS) count once per training seed of ``seeds``, each with its
    own block of environment seeds.
    """
    seeds: dict[str, set[int]] = {}
    sections = {"nn_policy": params.get("nn_policy"), "pg_cartpole": params.get("pg_cartpole"),
                "dqn": params.get("dqn"),
                **{f"pg_lunarlander.{config}": cfg
                   for config, cfg in vars(params.get("pg_lunarlander", SimpleNamespace())).items()}}
    for name, cfg in sections.items():
        if cfg is None:
            continue
        runs = ([for_training_seed(cfg, name, seed) for seed in params.get("seeds", [cfg.seed])]
                if name in PER_SEED_SECTIONS else [cfg])
        for run in runs:
            count_field = PER_SEED_SECTIONS.get(name, "episodes_per_iteration")
            env_seeds = (range(run.env_seed_start, run.env_seed_start + getattr(run, count_field))
                         if count_field else ())
            seeds[f"{name} (seed {run.seed})"] = {run.seed, *env_seeds}
    if "atari_dqn" in params:
        seeds["atari_dqn"] = {params["atari_dqn"].training.seed}
    if "custom_env" in params:
        seeds["custom_env"] = {params["custom_env"].training.seed}
    return seeds


def _check_evaluation_is_held_out(params: dict[str, SimpleNamespace], path: Path) -> None:
    """The evaluate stage's seeds overlap no training stage's seeds."""
    cfg = params.get("evaluate")
    if cfg is None:
        return
    evaluation = range(cfg.seed_start, cfg.seed_start + max(cfg.episodes, cfg.atari.episodes))
    for stage, seeds in training_seeds(params).items():
        shared = sorted(seeds & set(evaluation))
        if shared:
            raise ParamError(f"{path}: evaluate.seed_start = {cfg.seed_start} is not allowed: the "
                             f"evaluation seeds {evaluation.start}..{evaluation.stop - 1} overlap the "
                             f"training seeds of {stage} ({shared[:5]}); choose a range above them")
def _seed_ranges(cfg: SimpleNamespace) -> list[tuple[str, int, int]]:
    """(what, first seed, count) of every seed range the pi_bundle stage plays."""
    return [("calibration", cfg.calibration.seed_start, cfg.calibration.max_episodes),
            ("parity", cfg.parity.seed_start, cfg.parity.max_episodes),
            *((f"evaluation of {e.env_id}", e.seed_start, e.episodes) for e in cfg.evaluation)]


def _pi_bundle_seeds_disjoint(cfg: SimpleNamespace) -> bool:
    ranges = _seed_ranges(cfg)
    return all(_ranges_disjoint(a[1], a[2], b[1], b[2]) or (a[0].startswith("evaluation")
                                                             and b[0].startswith("evaluation"))
               for i, a in enumerate(ranges) for b in ranges[i + 1:])


_OBSERVATION_SET = section({"observations": _COUNT, "seed_start": _SEED, "max_episodes": _COUNT})


SCHEMA: dict[str, Validator] = {
    # "quick" marks a preview run with tiny settings (see profiles/quick.yaml).
    "profile": one_of("full", "quick"),
    # Training seeds of every CartPole-scale training stage (dvc.yaml: one instance per seed).
    "seeds": _distinct_seeds,
    "markov_chain": section(
        {
            "transition_matrix": list_of(list_of(_PROBABILITY), min_length=2),
            "start_state": integer(minimum=0),
            "runs": _COUNT,
            "max_steps": _COUNT,
            "seed": _SEED,
        },
        checks=[
            ("transition_matrix must be square with rows summing to 1",
             lambda c: _is_stochastic_matrix(c.transition_matrix)),
            ("start_state must index a row of transition_matrix",
             lambda c: c.start_state < len(c.transition_matrix)),
        ],
    ),
    "mdp": section(
        {
            # [state][action] -> probabilities of each next state; null marks an impossible action.
            "transition_probabilities": list_of(list_of(list_of(_PROBABILITY), nullable_items=True)),
            # [state][action] -> reward for each next state; null where the action is impossible.
            "rewards": list_of(list_of(list_of(number()), nullable_items=True)),
            "q_value_iteration": section({
                "discounts": list_of(_DISCOUNT),
                "iterations": _COUNT,
            }),
            "q_learning": section({
                "transitions": _COUNT,
                "learning_rate": _LEARNING_RATE,
                "learning_rate_decay": number(minimum=0.0),
                "discount": _DISCOUNT,
                "start_state": integer(minimum=0),
                "seed": _SEED,
            }),
        },
        checks=[
            ("transition_probabilities and rewards must have the same shape "
             "(null in the same places) and each probability row must sum to 1", _mdp_shapes_agree),
            ("every state needs at least one possible action", _every_state_has_an_action),
            ("q_learning.discount must be one of q_value_iteration.discounts "
             "(Q-learning is compared with the iteration at the same discount)",
             lambda c: c.q_learning.discount in c.q_value_iteration.discounts),
            ("q_learning.start_state must be a state of the MDP",
             lambda c: c.q_learning.start_state < len(c.transition_probabilities)),
        ],
    ),
    "cartpole_basics": section(
        {
            "env_id": gymnasium_env_id(),
            "seed": _SEED,
            "episodes": _COUNT,
            "max_steps": _COUNT,
            "episode_seed_start": _SEED,
            "gif_seed": _SEED,
            "gif_fps": _GIF_FPS,
        },
        checks=[("env_id must be a CartPole environment (the hard-coded policy reads the pole angle)",
                 lambda c: c.env_id.startswith("CartPole-"))],
    ),
    "nn_policy": section(
        {
            "env_id": gymnasium_env_id(),
            "hidden_units": list_of(_COUNT),
            "activation": _ACTIVATION,
            "environments": _COUNT,
            "iterations": _COUNT,
            "optimizer": _OPTIMIZER,
            "learning_rate": _LEARNING_RATE,
            "max_steps": _COUNT,
            "seed": _SEED,
            "env_seed_start": _SEED,
            "eval_episodes": _COUNT,
            "eval_seed_start": _SEED,
            "gif_seed": _SEED,
            "gif_fps": _GIF_FPS,
        },
        checks=[("env_id must be a CartPole environment (the imitated policy reads the pole angle)",
                 lambda c: c.env_id.startswith("CartPole-")),
                _held_out("environments")],
    ),
    "pg_cartpole": _reinforce("CartPole"),
    # One REINFORCE configuration per LunarLander stage (dvc.yaml's foreach over book and solve).
    "pg_lunarlander": section({"book": _reinforce("LunarLander"), "solve": _reinforce("LunarLander")}),
    "dqn": section(
        {
            "env_id": gymnasium_env_id(),
            "seed": _SEED,
            "evaluation": section({
                "episodes": _COUNT,
                "seed_start": _SEED,
                "max_steps": list_of(_COUNT),
            }),
            "gif": section({
                "seed": _SEED,
                "max_steps": _COUNT,
                "fps": integer(minimum=1, maximum=100),
            }),
        },
        checks=[("evaluation seeds (evaluation.seed_start onwards) must not include the training seed",
                 _evaluation_seeds_avoid_training)],
    ),
    # One entry per DQN variant; dvc.yaml's `dqn` matrix names the variants it trains.
    "dqn_variants": mapping_of(_DQN_VARIANT),
    "replay_benchmark": section(
        {
            "items": _COUNT,
            "sample_size": _COUNT,
            "batch_size": _COUNT,
            "repeats": _COUNT,
            "seed": _SEED,
        },
        checks=[("sample_size and batch_size must not exceed items",
                 lambda c: max(c.sample_size, c.batch_size) <= c.items)],
    ),
    "custom_env": section(
        {
            "grid_size": integer(minimum=2, maximum=20),
            "step_discount": number(minimum=0.0, maximum=1.0),
            "max_steps": _COUNT,
            "validate_episodes": _COUNT,
            "agent": section(
                {
                    "fc_layers": list_of(_COUNT),
                    "learning_rate": _LEARNING_RATE,
                    "discount": _DISCOUNT,
                    "epsilon_start": _PROBABILITY,
                    "epsilon_end": _PROBABILITY,
                    "epsilon_decay_steps": _COUNT,
                    "target_update_period": _COUNT,
                },
                checks=[_EPSILON_DECAYS],
            ),
            "training": section({
                "iterations": _COUNT,
                "collect_steps_per_iteration": _COUNT,
                "initial_collect_steps": integer(minimum=2),  # a training sample is 2 steps
                "replay_buffer_capacity": integer(minimum=2),
                "batch_size": _COUNT,
                "log_interval": _COUNT,
                "seed": _SEED,
            }),
        },
        checks=[("max_steps must allow a shortest path (2 * (grid_size - 1) steps)",
                 lambda c: c.max_steps >= 2 * (c.grid_size - 1)),
                ("training.log_interval must not exceed training.iterations",
                 lambda c: c.training.log_interval <= c.training.iterations)],
    ),
    "atari_dqn": section(
        {
            "environment": section({
                "frame_skip": _COUNT,
                "screen_size": integer(minimum=36, maximum=210),  # the Nature stack needs >= 36
                "noop_max": integer(minimum=0),
                "frame_stack": _COUNT,
                "max_episode_steps": _COUNT,
            }),
            "network": section({
                "conv_layers": list_of(list_of(_COUNT, length=3)),  # [filters, kernel, stride]
                "fc_layers": list_of(_COUNT),
            }),
            "agent": section(
                {
                    "learning_rate": _LEARNING_RATE,
                    "rmsprop_rho": _PROBABILITY,
                    "rmsprop_momentum": _PROBABILITY,
                    "rmsprop_epsilon": number(minimum=0.0, open_min=True),
                    "rmsprop_centered": boolean(),
                    "epsilon_start": _PROBABILITY,
                    "epsilon_end": _PROBABILITY,
                    "epsilon_decay_env_steps": _COUNT,
                    "target_update_period": _COUNT,
                    "discount": _DISCOUNT,
                },
                checks=[_EPSILON_DECAYS],
            ),
            "training": section(
                {
                    "iterations": _COUNT,
                    "collect_steps_per_iteration": _COUNT,
                    "replay_buffer_capacity": integer(minimum=2),
                    "initial_collect_steps": integer(minimum=2),  # a training sample is 2 steps
                    "batch_size": _COUNT,
                    "log_interval": _COUNT,
                    "checkpoint_interval": _COUNT,
                    "seed": _SEED,
                },
            ),
            "evaluation": section({
                "episodes": _COUNT,
                "seed_start": _SEED,
                "max_steps": _COUNT,
            }),
            "pictures": section({
                "seed": _SEED,
                "steps_before_frame": integer(minimum=0),
                "sub_episodes": _COUNT,
                "sub_episode_steps": integer(minimum=2, maximum=10),
                "gif_seed": _SEED,
                "gif_frames": integer(minimum=2),
                "gif_fps": integer(minimum=1, maximum=100),
            }),
            "games": section({"breakout": _ATARI_GAME, "space_invaders": _ATARI_GAME}),
        },
        checks=[
            ("evaluation seeds (seed_start .. seed_start + episodes - 1) must not include "
             "training.seed", _evaluation_seeds_are_unseen),
            ("pictures.sub_episode_steps must fit in training.replay_buffer_capacity",
             lambda c: c.pictures.sub_episode_steps <= c.training.replay_buffer_capacity),
        ],
    ),
    # Held-out evaluation of every exported policy; its seeds are checked against every training
    # stage's in validate_params_file.
    "evaluate": section({
        "episodes": _COUNT,
        "seed_start": _SEED,
        "cartpole_max_steps": list_of(_COUNT),
        "atari": section({"episodes": _COUNT, "max_steps": _COUNT}),
        "bootstrap": section({"resamples": integer(minimum=100), "seed": _SEED}),
    }),
    "pi_bundle": section(
        {
            "calibration": _OBSERVATION_SET,
            "parity": _OBSERVATION_SET,
            "evaluation": list_of(section({"env_id": gymnasium_env_id(), "episodes": _COUNT,
                                           "seed_start": _SEED, "max_steps": _COUNT})),
            "float32_tolerance": number(minimum=0.0, open_min=True),
            "int8_agreement_target": _PROBABILITY,
            "int8_target_env_ids": list_of(gymnasium_env_id(), min_length=0),
            "sample_observations": _COUNT,
            "benchmark_calls": _COUNT,
            "seed": _SEED,
        },
        checks=[("calibration, parity and evaluation seed ranges (seed_start .. seed_start + "
                 "max_episodes or episodes - 1) must not overlap", _pi_bundle_seeds_disjoint),
                ("evaluation must list each env_id once",
                 lambda c: len({e.env_id for e in c.evaluation}) == len(c.evaluation)),
                ("sample_observations must not exceed parity.observations",
                 lambda c: c.sample_observations <= c.parity.observations)],
    ),
    "aggregate": section({
        "confidence": number(minimum=0.5, maximum=1.0, open_max=True),
        "resamples": integer(minimum=100),
        "seed": _SEED,
        "curve_points": integer(minimum=2),
        "min_runs_for_claims": integer(minimum=2),
    }),
}


# Sections trained once per training seed (dvc.yaml matrices over `seeds`), with the field that
# counts the environment seeds a run starts from (None: the seed itself seeds the environment).
PER_SEED_SECTIONS: dict[str, str | None] = {
    "nn_policy": "environments",
    "pg_cartpole": "episodes_per_iteration",
    "pg_lunarlander.solve": "episodes_per_iteration",
    "dqn": None,
}


def environment_seed_start(section_start: int, environments: int, section_seed: int, seed: int) -> int:
    """First environment seed of training seed ``seed``'s run, in blocks of ``environments`` seeds.

    A stage's params section describes one run: its ``seed`` (the book's 42) and the environment
    seeds from ``section_start``. Training seed ``seed`` takes block ``seed XOR section_seed``, a
    one-to-one map that gives the section's own seed block 0: that run is exactly the section's
    single-seed run, and no two training seeds share an environment seed.
    """
    return section_start + (seed ^ section_seed) * environments


def for_training_seed(cfg: SimpleNamespace, section_name: str, seed: int) -> SimpleNamespace:
    """``cfg`` as training seed ``seed``'s run uses it: only the seeds differ between runs.

    Weights, action sampling and exploration take ``seed``; the environment seeds move to the
    seed's own block (:func:`environment_seed_start`). The run's training seeds must stay
    disjoint from the section's evaluation seeds.
    """
    count_field = PER_SEED_SECTIONS[section_name]
    run = SimpleNamespace(**{**vars(cfg), "seed": _SEED(seed, f"training seed of {section_name}")})
    if count_field is None:
        requirement, held_out = ("evaluation seeds must not include the training seed",
                                 _evaluation_seeds_avoid_training)
    else:
        run.env_seed_start = environment_seed_start(cfg.env_seed_start, getattr(cfg, count_field),
                                                    cfg.seed, seed)
        requirement, held_out = _held_out(count_field)
    if not held_out(run):
        raise ParamError(f"seeds: training seed {seed} is not allowed for {section_name}: "
                         f"{requirement} (this seed's environments start at "
                         f"{getattr(run, 'env_seed_start', seed)})")
    return run


def load_params(stage: str, path: Path = PARAMS_FILE) -> SimpleNamespace:
    """The validated section of params.yaml that belongs to ``stage``."""
    return validate_section(read_params_file(path), stage, SCHEMA, path)


def load_seeded_params(section_name: str, seed: int | None,
                       path: Path = PARAMS_FILE) -> SimpleNamespace:
    """A section of PER_SEED_SECTIONS as training seed ``seed``'s run uses it; ``None`` means the
    section's own seed (its single, reference run)."""
    top, _, sub = section_name.partition(".")
    cfg = load_params(top, path)
    cfg = getattr(cfg, sub) if sub else cfg
    return for_training_seed(cfg, section_name, cfg.seed if seed is None else seed)


def validate_params_file(path: Path = PARAMS_FILE) -> dict:
    """Every section, and every per-seed section under every training seed of ``seeds``."""
    params = validate_all(read_params_file(path), SCHEMA, path)
    for section_name in PER_SEED_SECTIONS:
        top, _, sub = section_name.partition(".")
        cfg = getattr(params[top], sub) if sub else params[top]
        for seed in params["seeds"]:
            try:
                for_training_seed(cfg, section_name, seed)
            except ParamError as error:
                raise ParamError(f"{path}: {error}") from None
    _check_evaluation_is_held_out(params, path)
    return params


def training_seed_argument(argv: list[str], description: str) -> int | None:
    """``--seed S`` of a per-seed stage (dvc.yaml passes each seed of ``seeds``); None: the section's."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed (default: the section's own seed, the book's run)")
    return parser.parse_args(argv).seed


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a parameter problem exits with status 2 and one clear line."""
    try:
        main()
    except ParamError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
