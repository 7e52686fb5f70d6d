"""A TF-Agents DQN on Atari games from pixels, one run per game: its settings.

``atari_dqn`` in params.yaml holds what every game shares (preprocessing, network, agent,
training, evaluation, pictures) and, under ``games``, each game's id and start rule. That is the
book's recipe. Under ``recipes`` (optional), each named entry is another recipe: only the keys
it changes, merged over the shared ones (``--recipe NAME``, with a training ``--seed``). The
keys a recipe can add (double DQN, a dueling head, n-step returns, Adam, augmentation,
bfloat16) default to the book's behaviour, so the book's runs read exactly what they read before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from stages.core.settings import (
    Block,
    Count,
    Discount,
    Episodes,
    Fps,
    NonNegativeInt,
    ParamError,
    Params,
    PositiveFloat,
    Probability,
    Seed,
    StageSettings,
    argument_parser,
    member_of,
    parse_arguments,
    validate,
)
from stages.tf_agents_kit.settings import EpsilonGreedy, ReplayTraining

# Every action name the Arcade Learning Environment knows; each game has a subset.
AtariAction = Literal["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT",
                      "DOWNRIGHT", "DOWNLEFT", "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE",
                      "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE"]


class ForcedSteps(Block):
    """Steps played for the agent, their frames not shown to it."""

    action: AtariAction
    """The action played."""
    steps: NonNegativeInt
    """How many agent steps of it."""


class Game(Block):
    env_id: str
    """A NoFrameskip Atari id of ale-py (frames are skipped by the preprocessing)."""
    after_reset: ForcedSteps
    """Played after a reset (Breakout: FIRE launches the ball)."""
    after_life_loss: ForcedSteps
    """Played after each lost life."""

    @model_validator(mode="after")
    def _playable(self) -> Game:
        from pi.policy_contract import AtariSetupError, check_game

        try:
            check_game(self.env_id, [self.after_reset.action, self.after_life_loss.action])
        except AtariSetupError as error:
            raise ValueError(str(error)) from None
        return self


class Environment(Block):
    frame_skip: Count
    """Each agent step repeats the action on this many ALE frames."""
    screen_size: int = Field(ge=36, le=210)
    """Grayscale frames shrunk to screen_size x screen_size (the Nature network needs >= 36)."""
    noop_max: NonNegativeInt
    """Up to this many no-op frames after a reset."""
    frame_stack: Count
    """The observation is the last this-many frames."""
    max_episode_steps: Count
    """Agent steps per episode at most."""


class Network(Block):
    conv_layers: list[list[Count]] = Field(min_length=1)
    """[filters, kernel size, stride] per convolution."""
    fc_layers: list[Count] = Field(min_length=1)
    """Units of the dense layers after the convolutions."""
    dueling: bool = False
    """Dueling head: Q(s, a) = V(s) + A(s, a) - mean over a' of A(s, a'), two dense heads on the
    last dense layer (Wang et al. 2016, "Dueling Network Architectures"; Dopamine's
    FullRainbowNetwork with dueling=True, which DrQ_eps.gin sets). False: one Q-value per action."""
    precision: Literal["float32", "mixed_bfloat16"] = "float32"
    """Compute type of the convolutions and dense layers (the Q-values stay float32).
    mixed_bfloat16 runs only where the CPU has bfloat16 instructions (avx512_bf16 or amx_bf16 in
    /proc/cpuinfo), float32 otherwise; the run says which and why, and metrics.json records it."""

    @model_validator(mode="after")
    def _triples(self) -> Network:
        if any(len(layer) != 3 for layer in self.conv_layers):
            raise ValueError("each of conv_layers must be [filters, kernel size, stride]")
        return self


class Adam(Block):
    """Keras' Adam (legacy): epsilon is added to the root of the uncorrected second moment
    ("epsilon hat" of the Adam paper; optax adds it after the bias correction)."""

    epsilon: PositiveFloat
    """DrQ_eps.gin: create_optimizer.eps = 0.00015 (DER's, van Hasselt et al. 2019)."""
    beta_1: Probability = 0.9
    """Decay of the gradient average (Dopamine's create_optimizer default)."""
    beta_2: Probability = 0.999
    """Decay of the squared-gradient average (Dopamine's create_optimizer default)."""


class Agent(EpsilonGreedy):
    learning_rate: PositiveFloat
    """The optimizer's: Keras RMSprop's, as in the book, or Adam's when ``adam`` is set."""
    rmsprop_rho: Probability
    """RMSprop's decay of the squared-gradient average."""
    rmsprop_momentum: Probability
    """RMSprop's momentum."""
    rmsprop_epsilon: PositiveFloat
    """Added to the root (Keras' rule)."""
    rmsprop_centered: bool
    """Centered RMSprop (the gradient's variance)."""
    epsilon_decay_env_steps: Count
    """Epsilon reaches epsilon_end after this many collected environment steps."""
    target_update_period: Count
    """Training steps between target-network copies."""
    discount: Discount
    """Discount of the bootstrapped targets."""
    double: bool = False
    """Double DQN (TF-Agents' DdqnAgent): the online network picks the next action, the target
    network values it (van Hasselt et al. 2016; DrQ_eps.gin: double_dqn = True)."""
    n_step_update: Count = 1
    """Targets from this many rewards, then the bootstrapped value (TF-Agents' n_step_update;
    DrQ_eps.gin: update_horizon = 10). A training sample is n_step_update + 1 steps."""
    adam: Adam | None = None
    """Set: Adam with ``learning_rate`` replaces RMSprop (the rmsprop_* keys are then unused;
    DrQ_eps.gin: optimizer = 'adam', learning_rate = 0.0001). Unset: the book's RMSprop."""


class Augmentation(Block):
    """Random shifts of the frames in every training batch, never when acting or evaluating
    (DrQ, Kostrikov et al. 2020; Dopamine's drq_image_augmentation in labs/atari_100k, which
    DrQ_eps.gin turns on with data_augmentation = True)."""

    pad: Count
    """Each frame stack is padded by this many pixels on every side, repeating the edge pixels,
    and cropped back to its size at a random offset: a shift of up to +-pad pixels. Each
    observation of a sample (first and later steps) gets its own shift (Dopamine: 4)."""


class Training(ReplayTraining):
    checkpoint_interval: Count
    """Iterations between checkpoints (and one at the last iteration)."""


class Evaluation(Episodes):
    """Greedy policy, one seed each; a random baseline on the same seeds."""

    max_steps: Count
    """Agent steps per episode at most."""


class Pictures(Block):
    seed: Seed
    """The raw and the preprocessed frame."""
    steps_before_frame: NonNegativeInt
    """Random steps played first, so something moves."""
    sub_episodes: Count
    """Sampled from the replay buffer after training ..."""
    sub_episode_steps: int = Field(ge=2, le=10)
    """... of this many consecutive steps each."""
    gif_seed: Seed
    gif_frames: int = Field(ge=2)
    """Frames of the trained agent's GIF."""
    gif_fps: Fps


class Shared(Block):
    environment: Environment
    """The preprocessing every game shares."""
    network: Network
    """The Nature DQN stack."""
    agent: Agent
    """The TF-Agents DQN agent and its optimizer."""
    training: Training
    """The collect-and-train loop and its checkpoints."""
    evaluation: Evaluation
    """Greedy episodes on held-out seeds, beside random play."""
    pictures: Pictures
    """Frames, sub-episodes and the GIF."""
    augmentation: Augmentation | None = None
    """Random shifts of training batches; unset (the book's): none."""

    @model_validator(mode="after")
    def _consistent(self) -> Shared:
        if self.agent.n_step_update + 1 > self.training.initial_collect_steps:
            raise ValueError("training.initial_collect_steps must hold a training sample "
                             "(agent.n_step_update + 1 steps)")
        if self.training.seed in self.evaluation.seeds:
            raise ValueError("evaluation seeds (seed_start .. seed_start + episodes - 1) must not "
                             "include training.seed")
        if self.pictures.sub_episode_steps > self.training.replay_buffer_capacity:
            raise ValueError("pictures.sub_episode_steps must fit in training.replay_buffer_capacity")
        return self


class Run(Block):
    """One run of a recipe (dvc.yaml: one stage per run, named <game>_<recipe>_s<seed>)."""

    game: str
    """A game of atari_dqn.games."""
    recipe: str
    """A recipe of atari_dqn.recipes."""
    seed: Seed
    """Its training seed (the environment and TensorFlow)."""


def run_name(game: str, recipe: str, seed: int) -> str:
    return f"{game}_{recipe}_s{seed}"


class Section(Shared):
    """The whole ``atari_dqn`` section: what the games share, and the games by name."""

    games: dict[str, Game] = Field(min_length=1)
    """Each game's id and start rule, by name (dvc.yaml: one stage per game)."""
    recipes: dict[str, dict[str, Any]] = {}
    """Other recipes by name: the keys each changes, merged over the shared ones."""
    runs: dict[str, Run] = {}
    """The recipes' runs by name, <game>_<recipe>_s<seed> (a dvc.yaml foreach can make one stage
    each, reading atari_dqn.recipes.<recipe>: adding a run leaves the others and the book's be)."""

    @model_validator(mode="after")
    def _runs_known(self) -> Section:
        for name, run in self.runs.items():
            if run.game not in self.games or run.recipe not in self.recipes:
                raise ValueError(f"runs.{name}: game '{run.game}' or recipe '{run.recipe}' is not in "
                                 f"games ({', '.join(self.games)}) or recipes ({', '.join(self.recipes)})")
            if name != run_name(run.game, run.recipe, run.seed):
                raise ValueError(f"runs.{name} must be named {run_name(run.game, run.recipe, run.seed)}")
        return self


class Settings(Shared, StageSettings):
    """One game's run."""

    name: str
    """The game's name in params.yaml."""
    game: Game
    """The game's id and start rule."""
    recipe: str | None = None
    """The recipe's name under atari_dqn.recipes; None: the book's."""

    @property
    def run(self) -> str:
        """The run's name: the game's for the book's recipe (its stage atari_dqn@<game>, its
        folders and policy as they always were), else <game>_<recipe>_s<seed>."""
        if self.recipe is None:
            return self.name
        return run_name(self.name, self.recipe, self.training.seed)

    def training_seeds(self) -> set[int]:
        return {self.training.seed}

    def environment_ids(self) -> set[str]:
        return {self.game.env_id}


NOT_SHARED = ("games", "recipes", "runs")  # atari_dqn's keys that are not settings of every run


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` laid over it, mappings merged key by key."""
    result = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def settings(argv: Sequence[str], params: Params) -> Settings:
    """``--game NAME``: the run of game NAME with the book's recipe (dvc.yaml: one stage per
    game); with ``--recipe R [--seed S]``: recipe R of atari_dqn.recipes, training seed S
    (default: training.seed after R's changes)."""
    parser = argument_parser(__doc__, member="game", seed=True)
    parser.add_argument("--recipe", default=None, help="a recipe of params.yaml's atari_dqn.recipes")
    args = parse_arguments(parser, argv)
    name = member_of(params, "atari_dqn.games", args.game, "game")
    game = params.read(Game, f"atari_dqn.games.{name}")
    if args.recipe is None:
        if args.seed is not None:
            raise ParamError("--seed needs --recipe: the book's runs train with atari_dqn.training.seed")
        shared = params.read(Shared, "atari_dqn", without=NOT_SHARED)
        return Settings(**dict(shared), name=name, game=game)
    recipe = member_of(params, "atari_dqn.recipes", args.recipe, "recipe")
    key = f"atari_dqn.recipes.{recipe}"
    changes = params.raw(key)
    if not isinstance(changes, Mapping):
        raise ParamError(f"{params.path}: {key} must be a mapping of the keys the recipe changes")
    base = {k: v for k, v in params.raw("atari_dqn").items() if k not in NOT_SHARED}
    params.read_keys += [f"atari_dqn.{k}" for k in base if k not in changes or isinstance(changes[k], Mapping)]
    params.read_keys.append(key)
    value = merged(base, changes)
    if args.seed is not None:
        value = merged(value, {"training": {"seed": args.seed}})
    shared = validate(Shared, value, key, params.path)
    return Settings(**dict(shared), name=name, game=game, recipe=recipe)
