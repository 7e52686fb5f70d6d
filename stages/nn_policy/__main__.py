"""A small network learns to imitate the hard-coded CartPole policy.

Fifty environments run side by side in a Gymnasium vector environment that resets an environment
in the step its episode ends. At each iteration the network's P(left) for the current
observations is pushed, by binary cross-entropy, toward the hard-coded policy's choice (P(left) = 1
when the pole leans left), and the environments move on with actions sampled from the P(left)
computed before that update: the network drives, the hard-coded policy teaches.

``python -m stages.nn_policy --seed S`` trains with training seed S (dvc.yaml: one run per seed
of params.yaml's ``seeds``); the policy is ``nn_policy_s<S>``. The training history is DVCLive's,
in ``data/nn_policy/s<S>/dvclive``, one step per iteration (``mean_return``, ``loss``).
"""

from __future__ import annotations

import sys
from collections import deque

import gymnasium as gym
import numpy as np
import tensorflow as tf
import tf_keras
from tqdm import tqdm

from stages.policies.assessment import assess_policy, record_policy_gif
from stages.core.book import book_value
from stages.policies.cartpole import LEFT, basic_policy
from stages.core.io import write_json
from stages.core.live_log import TrainingLive
from stages.core.optimizers import make_optimizer
from stages.core.plotting import plot_learning_curve
from stages.policies.export import export_keras_policy
from stages.policies.index import INDEX_DIR, actions_from_outputs, seeded_policy_name
from stages.policy_gradient.training import policy_network
from stages.core.seeding import seed_everything
from stages.core.settings import Params, run_stage
from stages.core.timings import write_timings
from stages.nn_policy import settings

NAME = "nn_policy"


def make_imitation_step(model: tf_keras.Model, optimizer: tf_keras.optimizers.Optimizer):
    """One update toward the target P(left); returns the loss and the P(left) it started from."""

    @tf.function(input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32),
                                  tf.TensorSpec((None, 1), tf.float32)])
    def step(observations: tf.Tensor, target_p_left: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            p_left = model(observations, training=True)
            loss = tf.reduce_mean(tf_keras.losses.binary_crossentropy(target_p_left, p_left))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, p_left

    return step


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    training, seed = cfg.training, cfg.training.seed
    data, reports = f"data/{NAME}/s{seed}", f"reports/{NAME}/s{seed}"
    hard_coded_mean_return = book_value("cartpole_basics")  # the policy imitated
    book_final_loss = book_value("nn_policy", "final_loss")
    rng = seed_everything(seed)
    env_seeds = list(training.env_seeds)
    envs = gym.make_vec(cfg.env_id, num_envs=training.environments, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                        max_episode_steps=cfg.max_steps)
    model = policy_network(envs.single_observation_space.shape[0], cfg.network.hidden_units,
                           cfg.network.activation, "p_left", n_actions=2)
    imitation_step = make_imitation_step(model, make_optimizer(cfg.optimizer.name,
                                                               cfg.optimizer.learning_rate))

    log = TrainingLive(f"{data}/dvclive", "iteration")
    observations, _ = envs.reset(seed=env_seeds)
    running_returns = np.zeros(training.environments)
    finished_returns: deque[float] = deque(maxlen=training.environments)  # the latest episodes
    with tqdm(range(training.iterations), desc="imitating the hard-coded policy", unit="iteration",
              mininterval=1.0) as bar:
        for iteration in bar:
            target_p_left = (basic_policy(observations) == LEFT).astype(np.float32)[:, np.newaxis]
            loss, p_left = imitation_step(tf.constant(observations), tf.constant(target_p_left))
            actions = actions_from_outputs("p_left", p_left.numpy(), rng)
            observations, rewards, terminated, truncated, _ = envs.step(actions)
            running_returns += rewards
            ended = terminated | truncated
            finished_returns.extend(running_returns[ended])
            running_returns[ended] = 0.0
            mean_return = float(np.mean(finished_returns)) if finished_returns else float("nan")
            log.log(iteration, mean_return=mean_return, loss=float(loss))
            bar.set_postfix(loss=f"{float(loss):.3f}", mean_return=f"{mean_return:.1f}", refresh=False)
    envs.close()
    log.close()
    plot_learning_curve(log.frame(), f"{reports}/learning_curve.png",
                        f"Imitation over {training.environments} environments: latest episodes' return",
                        reference={"hard-coded policy": hard_coded_mean_return}, loss=True)

    entry = export_keras_policy(
        model, INDEX_DIR / seeded_policy_name(NAME, seed), stage=f"{NAME}@{seed}",
        algorithm=NAME, seed=seed, env_id=cfg.env_id, output="p_left",
        training_max_steps=cfg.max_steps, training_seeds=tuple(env_seeds),
        details={"algorithm": "imitation of the hard-coded policy (binary cross-entropy)",
                 "iterations": training.iterations, "environments": training.environments,
                 "training_log": f"{data}/dvclive"})
    eval_seeds = list(cfg.evaluation.seeds)
    evaluation = assess_policy(entry, eval_seeds, cfg.max_steps)
    gif = record_policy_gif(entry, f"{reports}/policy.gif", cfg.gif.seed, cfg.max_steps, cfg.gif.fps)

    losses = log.frame()["loss"]
    write_json(f"{reports}/metrics.json", {
        "seed": seed,
        "training": {
            "iterations": training.iterations,
            "final_loss": float(losses.iloc[-1]),
            "mean_loss_last_100_iterations": float(losses.iloc[-100:].mean()),
            "book_final_loss": book_final_loss,
            "final_mean_return": log.mean_return_over_last(1),
        },
        "evaluation": evaluation,
        "hard_coded_policy_mean_return": hard_coded_mean_return,
        "gif_episode": gif,
    })
    write_timings(f"{NAME}@{seed}", {"training": {"wall_time_s": log.wall_time_s}})
    print(f"imitation: final loss {float(losses.iloc[-1]):.3f} (book {book_final_loss}); held-out "
          f"greedy {evaluation['greedy']['mean']:.1f} +- {evaluation['greedy']['std']:.1f}, sampled "
          f"{evaluation['sampled']['mean']:.1f} +- {evaluation['sampled']['std']:.1f}")


if __name__ == "__main__":
    run_stage(main)
