"""A TF-Agents DQN on Atari games from pixels, one run per game: its settings.

``atari_dqn`` in params.yaml holds what every game shares (preprocessing, network, agent,
training, evaluation, pictures) and, under ``games``, each game's id and start rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from stages.core.settings import (
    Block,
    Count,
    Discount,
    Episodes,
    Fps,
    NonNegativeInt,
    Params,
    PositiveFloat,
    Probability,
    Seed,
    StageSettings,
    argument_parser,
    member_of,
    parse_arguments,
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

    @model_validator(mode="after")
    def _triples(self) -> Network:
        if any(len(layer) != 3 for layer in self.conv_layers):
            raise ValueError("each of conv_layers must be [filters, kernel size, stride]")
        return self


class Agent(EpsilonGreedy):
    learning_rate: PositiveFloat
    """Keras RMSprop's, as in the book."""
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

    @model_validator(mode="after")
    def _consistent(self) -> Shared:
        if self.training.seed in self.evaluation.seeds:
            raise ValueError("evaluation seeds (seed_start .. seed_start + episodes - 1) must not "
                             "include training.seed")
        if self.pictures.sub_episode_steps > self.training.replay_buffer_capacity:
            raise ValueError("pictures.sub_episode_steps must fit in training.replay_buffer_capacity")
        return self


class Section(Shared):
    """The whole ``atari_dqn`` section: what the games share, and the games by name."""

    games: dict[str, Game] = Field(min_length=1)
    """Each game's id and start rule, by name (dvc.yaml: one stage per game)."""


class Settings(Shared, StageSettings):
    """One game's run."""

    name: str
    """The game's name in params.yaml."""
    game: Game
    """The game's id and start rule."""

    def training_seeds(self) -> set[int]:
        return {self.training.seed}

    def environment_ids(self) -> set[str]:
        return {self.game.env_id}


def settings(argv: Sequence[str], params: Params) -> Settings:
    """``--game NAME``: the run of game NAME (dvc.yaml: one stage per game)."""
    args = parse_arguments(argument_parser(__doc__, member="game"), argv)
    name = member_of(params, "atari_dqn.games", args.game, "game")
    shared = params.read(Shared, "atari_dqn", without=("games",))
    game = params.read(Game, f"atari_dqn.games.{name}")
    return Settings(**dict(shared), name=name, game=game)
