"""Deep Q-networks on CartPole, one variant per run.

    python -m stages.dqn --variant double_dqn --seed 0

Settings shared by every variant are in params.yaml's ``dqn`` section; what makes a variant
(network, optimizer, loss, target network, double Q-learning, prioritised replay) is its entry in
``dqn.variants``. dvc.yaml declares the stage once, as a matrix over the variant names and the
training seeds of params.yaml's ``seeds`` (without ``--seed``: the ``dqn`` section's seed).

Training follows the book: epsilon-greedy episodes with a decaying epsilon, a small replay
memory, learning once the warm-up episodes have filled it, and the weights of the best episode
kept. ``learn_every`` sets how often a gradient step is taken: after each episode (what the
book's code does) or after each environment step. Keeping the best weights can hide a collapse
at the end of training (the book's Double DQN ended on a 55-step episode), so both policies are
exported and evaluated: ``<variant>_s<seed>`` (best-kept weights) and ``<variant>_final_s<seed>``
(the weights at the end of training).
Evaluation is greedy, on seeds disjoint from training, at each step limit of
``dqn.evaluation.max_steps`` (the book's 200 and CartPole-v1's own 500).

The training history is DVCLive's, in ``data/dqn/<variant>/s<seed>/dvclive``, one step per
episode: ``return``, ``mean_return`` (of the last ``moving_average_episodes``), ``epsilon``,
``loss`` (the episode's mean, ``nan`` before learning starts) and ``gradient_steps``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras
from tqdm import tqdm

from stages.dqn.deep_q import DeepQLearner, build_q_network
from stages.policies.evaluation import evaluate_policy
from stages.core.frames import record_episode, write_gif
from stages.core.io import write_json
from stages.core.live_log import TrainingLive
from stages.core.plotting import new_figure, save_figure
from stages.policies.export import export_keras_policy
from stages.policies.index import INDEX_DIR, PolicyEntry, load_policy, seeded_policy_name
from stages.replay import PrioritizedReplayMemory, ReplayMemory
from stages.core.seeding import seed_everything
from stages.core.settings import ParamError, Params, run_stage
from stages.core.timings import write_timings
from stages.dqn import Settings, Variant, settings


@dataclass
class TrainingRun:
    """What training leaves behind: the per-episode log and the weights worth keeping."""

    log: list[dict] = field(default_factory=list)
    best_episode: int = -1
    best_return: float = -np.inf
    best_weights: list[np.ndarray] = field(default_factory=list)
    environment_steps: int = 0
    gradient_steps: int = 0

    @property
    def returns(self) -> np.ndarray:
        return np.array([row["return"] for row in self.log])


def variant_title(variant: Variant) -> str:
    """A readable name built from what the variant switches on, e.g. 'Dueling Double DQN'."""
    title = ("Dueling " if variant.network.dueling else "") + ("Double " if variant.double else "") + "DQN"
    return title + (" with prioritized replay" if variant.prioritized_replay else "")


def epsilon_at(episode: int, variant: Variant) -> float:
    return max(1.0 - episode / variant.epsilon_decay_episodes, variant.epsilon_min)


def beta_at(episode: int, variant: Variant) -> float:
    """Importance-sampling exponent, annealed linearly over the training episodes (1 if unused)."""
    per = variant.prioritized_replay
    if per is None:
        return 1.0
    progress = episode / max(variant.episodes - 1, 1)
    return per.beta_start + progress * (per.beta_end - per.beta_start)


def make_memory(variant: Variant, observation_shape: tuple[int, ...],
                rng: np.random.Generator) -> ReplayMemory:
    per = variant.prioritized_replay
    if per is None:
        return ReplayMemory(variant.replay_capacity, observation_shape, rng=rng)
    return PrioritizedReplayMemory(variant.replay_capacity, observation_shape, alpha=per.alpha,
                                   priority_offset=per.priority_offset, rng=rng)


def learn_from_memory(learner: DeepQLearner, memory: ReplayMemory, batch_size: int,
                      beta: float) -> float:
    """One gradient step on a sampled batch; prioritised replay learns the batch's new TD errors."""
    if isinstance(memory, PrioritizedReplayMemory):
        batch = memory.sample(batch_size, beta)
        loss, td_errors = learner.learn(batch)
        memory.update_priorities(batch.indices, td_errors)
        return loss
    return learner.learn(memory.sample(batch_size))[0]


def play_episode(env: gym.Env, learner: DeepQLearner, memory: ReplayMemory, rng: np.random.Generator,
                 *, epsilon: float, learn: bool, batch_size: int, beta: float,
                 seed: int | None) -> tuple[float, int, list[float]]:
    """One epsilon-greedy episode, remembering every transition; returns its return, steps, losses.

    Only termination stops bootstrapping: an episode cut by the step cap is stored as it is,
    a state whose future still counts.
    """
    observation, _ = env.reset(seed=seed)
    total_reward, steps, losses, done = 0.0, 0, [], False
    while not done:
        if rng.random() < epsilon:
            action = int(rng.integers(env.action_space.n))
        else:
            action = learner.greedy_action(observation)
        next_observation, reward, terminated, truncated, _ = env.step(action)
        memory.append(observation, action, reward, next_observation, terminated)
        observation, done = next_observation, terminated or truncated
        total_reward, steps = total_reward + float(reward), steps + 1
        if learn:
            losses.append(learn_from_memory(learner, memory, batch_size, beta))
    return total_reward, steps, losses


def train(variant: Variant, learner: DeepQLearner, memory: ReplayMemory, rng: np.random.Generator,
          *, env_id: str, seed: int, name: str, moving_average: int, log_folder: str) -> TrainingRun:
    """The book's loop: decaying epsilon, learning after the warm-up, best weights kept (ties: latest).

    The history goes to the DVCLive folder ``log_folder``, one step per episode."""
    env = gym.make(env_id, max_episode_steps=variant.max_steps)
    run = TrainingRun()
    live = TrainingLive(log_folder, "episode")
    start = time.perf_counter()
    with tqdm(range(variant.episodes), desc=f"train {name}", unit="episode", mininterval=1.0) as bar:
        for episode in bar:
            learning = episode >= variant.warmup_episodes
            epsilon, beta = epsilon_at(episode, variant), beta_at(episode, variant)
            # The first reset is seeded; later episodes continue the environment's random stream.
            episode_return, steps, losses = play_episode(
                env, learner, memory, rng, epsilon=epsilon, learn=learning and variant.learn_every == "step",
                batch_size=variant.batch_size, beta=beta, seed=seed if episode == 0 else None)
            if episode_return >= run.best_return:  # the weights that just played the episode
                run.best_episode, run.best_return = episode, episode_return
                run.best_weights = learner.online.get_weights()
            if learning and variant.learn_every == "episode":
                losses.append(learn_from_memory(learner, memory, variant.batch_size, beta))
            if learning and variant.target_update_episodes and episode % variant.target_update_episodes == 0:
                learner.sync_target()
            run.environment_steps += steps
            run.gradient_steps += len(losses)
            run.log.append({"episode": episode, "return": episode_return, "epsilon": epsilon,
                            "loss": float(np.mean(losses)) if losses else np.nan,
                            "gradient_steps": run.gradient_steps,
                            "wall_time_s": time.perf_counter() - start})
            recent = run.log[-1]["mean_return"] = float(run.returns[-moving_average:].mean())
            live.log(episode, **run.log[-1])
            bar.set_postfix(ret=f"{episode_return:.0f}", mean=f"{recent:.1f}", eps=f"{epsilon:.2f}",
                            refresh=False)
    env.close()
    live.close()
    return run


def plot_returns(run: TrainingRun, variant: Variant, title: str, path: str, moving_average: int) -> None:
    log = pd.DataFrame(run.log)
    fig, ax = new_figure(figsize=(8, 4))
    ax.plot(log["episode"], log["return"], linewidth=1, label="return per episode")
    ax.plot(log["episode"], log["mean_return"], label=f"mean of the last {moving_average}")
    ax.axvline(run.best_episode, color="grey", linestyle=":",
               label=f"best-kept weights (episode {run.best_episode})")
    last = log.iloc[-1]
    ax.plot(last["episode"], last["return"], "o", color="C3",
            label=f"last episode: {last['return']:.0f}")
    ax.axvspan(0, variant.warmup_episodes, color="grey", alpha=0.1, label="warm-up (no learning)")
    ax.set_xlabel("Episode")
    ax.set_ylabel("Sum of rewards")
    ax.set_ylim(0, variant.max_steps * 1.05)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=9)
    save_figure(fig, path)


def export_policies(learner: DeepQLearner, run: TrainingRun, cfg: Settings, name: str, title: str,
                    live_folder: str) -> dict[str, PolicyEntry]:
    """The best-kept weights as ``<name>_s<seed>``, the final weights as ``<name>_final_s<seed>``."""
    best = tf_keras.models.clone_model(learner.online)
    best.set_weights(run.best_weights)
    common = dict(stage=f"dqn@{name}-{cfg.seed}", seed=cfg.seed, env_id=cfg.env_id, output="q_values",
                  training_max_steps=cfg.variant.max_steps, training_seeds=(cfg.seed,))
    final_return = float(run.returns[-1])
    return {
        "best": export_keras_policy(
            best, INDEX_DIR / seeded_policy_name(name, cfg.seed), algorithm=name, **common, details={
                "algorithm": title, "weights": "best training episode (latest of ties)",
                "episode": run.best_episode, "training_return": run.best_return,
                "training_log": live_folder}),
        "final": export_keras_policy(
            learner.online, INDEX_DIR / seeded_policy_name(f"{name}_final", cfg.seed),
            algorithm=f"{name}_final", **common, details={
                "algorithm": title, "weights": "end of training",
                "episode": len(run.log) - 1, "training_return": final_return,
                "training_log": live_folder}),
    }


def evaluate(entries: dict[str, PolicyEntry], cfg: Settings) -> dict:
    """Greedy returns of each exported policy at each step limit, on the evaluation seeds."""
    seeds = list(cfg.evaluation.seeds)
    results = {}
    for which, entry in entries.items():
        policy = load_policy(entry)
        results[which] = {"policy": entry.name}
        for max_steps in cfg.evaluation.max_steps:
            result = evaluate_policy(cfg.env_id, policy, seeds, max_steps=max_steps)
            results[which][f"max_steps_{max_steps}"] = result.summary()
    return results


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    name, variant = cfg.name, cfg.variant
    title = variant_title(variant)
    reports, data = f"reports/dqn/{name}/s{cfg.seed}", f"data/dqn/{name}/s{cfg.seed}"

    # A network this small runs fastest on one thread, and one thread keeps its sums in one order.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = seed_everything(cfg.seed)
    env = gym.make(cfg.env_id)
    if not isinstance(env.action_space, gym.spaces.Discrete) or len(env.observation_space.shape) != 1:
        raise ParamError(f"dqn.env_id = {cfg.env_id!r}: needs discrete actions and flat observations")
    observation_shape, n_actions = env.observation_space.shape, int(env.action_space.n)
    env.close()

    online = build_q_network(observation_shape[0], n_actions, variant.network.hidden_units,
                             activation=variant.network.activation, dueling=variant.network.dueling)
    learner = DeepQLearner(online, optimizer=variant.optimizer.name,
                           learning_rate=variant.optimizer.learning_rate, loss=variant.loss,
                           discount=variant.discount, double=variant.double,
                           target_network=variant.target_update_episodes is not None)
    memory = make_memory(variant, observation_shape, rng.spawn(1)[0])

    started = time.perf_counter()
    run = train(variant, learner, memory, rng, env_id=cfg.env_id, seed=cfg.seed, name=name,
                moving_average=cfg.moving_average_episodes, log_folder=f"{data}/dvclive")
    training_time = time.perf_counter() - started
    plot_returns(run, variant, f"{title} on {cfg.env_id}", f"{reports}/{name}_rewards_plot.png",
                 cfg.moving_average_episodes)

    entries = export_policies(learner, run, cfg, name, title, f"{data}/dvclive")
    started = time.perf_counter()
    evaluation = evaluate(entries, cfg)
    evaluation_time = time.perf_counter() - started

    gif_env = gym.make(cfg.env_id, render_mode="rgb_array", max_episode_steps=cfg.gif.max_steps)
    best_policy = load_policy(entries["best"])
    episode = record_episode(gif_env, lambda obs: int(best_policy(obs[None])[0]), cfg.gif.seed,
                             cfg.gif.max_steps)
    gif_env.close()
    write_gif(f"{reports}/{name}.gif", episode.frames, fps=cfg.gif.fps)

    returns = run.returns
    write_json(f"{reports}/metrics.json", {
        "variant": name,
        "seed": cfg.seed,
        "algorithm": title,
        "training": {
            "episodes": variant.episodes,
            "max_steps": variant.max_steps,
            "environment_steps": run.environment_steps,
            "gradient_steps": run.gradient_steps,
            "best_episode": run.best_episode,
            "best_return": run.best_return,
            "final_return": float(returns[-1]),
            "mean_return_last_100_episodes": float(returns[-100:].mean()),
        },
        "evaluation": {
            "episodes": cfg.evaluation.episodes,
            "seed_start": cfg.evaluation.seed_start,
            **evaluation,
        },
        "gif_episode": {"policy": entries["best"].name, "seed": cfg.gif.seed,
                        "return": episode.total_reward, "frames": len(episode.frames)},
    })
    write_timings(f"dqn@{name}-{cfg.seed}", {"training": {"wall_time_s": training_time},
                                             "evaluation": {"wall_time_s": evaluation_time}})
    for which in ("best", "final"):
        scores = ", ".join(f"{key[len('max_steps_'):]} steps: {value['mean']:.1f} +- {value['std']:.1f}"
                           for key, value in evaluation[which].items() if key.startswith("max_steps_"))
        print(f"{title}, {which} weights ({evaluation[which]['policy']}): {scores}")
    print(f"training: {training_time:.0f} s, best return {run.best_return:.0f} (episode "
          f"{run.best_episode}), final return {returns[-1]:.0f}")


if __name__ == "__main__":
    run_stage(main)
