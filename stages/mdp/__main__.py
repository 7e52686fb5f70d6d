"""A three-state MDP solved by Q-value iteration (two discounts) and by Q-learning.

Impossible actions hold -inf in every Q table so that a max over actions ignores them; in JSON
they are written as null. Q-learning draws with NumPy's legacy ``RandomState`` in the book's
order (the action, then the next state), which makes its table reproduce the book's to the digit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.core.io import write_csv, write_json, write_npy
from stages.core.plotting import new_figure, save_figure
from stages.core.settings import Params, run_stage
from stages.mdp import settings

DATA = "data/mdp"
REPORTS = "reports/mdp"


@dataclass(frozen=True)
class MDP:
    transitions: np.ndarray  # [state, action, next_state]; zero rows for impossible actions
    rewards: np.ndarray  # [state, action, next_state]
    possible: np.ndarray  # [state, action] bool

    @classmethod
    def from_params(cls, probabilities: list, rewards: list) -> MDP:
        n_states, n_actions = len(probabilities), max(len(a) for a in probabilities)
        t = np.zeros((n_states, n_actions, n_states))
        r = np.zeros((n_states, n_actions, n_states))
        possible = np.zeros((n_states, n_actions), dtype=bool)
        for s, (probs_by_action, rewards_by_action) in enumerate(zip(probabilities, rewards)):
            for a, (probs, rews) in enumerate(zip(probs_by_action, rewards_by_action)):
                if probs is not None:
                    t[s, a], r[s, a], possible[s, a] = probs, rews, True
        return cls(t, r, possible)

    def initial_q(self) -> np.ndarray:
        return np.where(self.possible, 0.0, -np.inf)


def q_value_iteration(mdp: MDP, discount: float, iterations: int) -> np.ndarray:
    """History of Q tables, shape (iterations + 1, states, actions); entry 0 is the start."""
    q = mdp.initial_q()
    history = [q]
    for _ in range(iterations):
        expected = np.einsum("san,san->sa", mdp.transitions, mdp.rewards + discount * q.max(axis=1))
        q = np.where(mdp.possible, expected, -np.inf)
        history.append(q)
    return np.stack(history)


def q_learning(mdp: MDP, *, transitions: int, learning_rate: float, learning_rate_decay: float,
               discount: float, start_state: int, seed: int) -> np.ndarray:
    """History of Q tables over ``transitions`` steps of a uniformly random exploration policy."""
    rng = np.random.RandomState(seed)
    n_states = mdp.transitions.shape[0]
    actions_of = [np.flatnonzero(row) for row in mdp.possible]
    q = mdp.initial_q()
    history = np.empty((transitions + 1, *q.shape))
    state = start_state
    for t in tqdm(range(transitions), desc="Q-learning", unit="step", mininterval=1.0):
        history[t] = q
        action = int(rng.choice(actions_of[state]))
        next_state = int(rng.choice(n_states, p=mdp.transitions[state, action]))
        reward = mdp.rewards[state, action, next_state]
        alpha = learning_rate / (1 + t * learning_rate_decay)
        q[state, action] = (1 - alpha) * q[state, action] + alpha * (reward + discount * q[next_state].max())
        state = next_state
    history[transitions] = q
    return history


def greedy_policy(q: np.ndarray) -> list[int]:
    return [int(a) for a in np.argmax(q, axis=1)]


def table(q: np.ndarray) -> list[list[float | None]]:
    """A Q table for JSON: impossible actions (-inf) become null."""
    return [[float(v) if np.isfinite(v) else None for v in row] for row in q]


def plot_q_s0_a0(iteration_history: np.ndarray, learning_history: np.ndarray, converged: float,
                 path: str) -> None:
    fig, axes = new_figure(1, 2, figsize=(10, 4), sharey=True)
    panels = [("Q-value iteration", iteration_history), ("Q-learning", learning_history)]
    for ax, (title, history) in zip(axes, panels):
        steps = np.arange(len(history))
        ax.axhline(converged, color="black", linestyle="--", linewidth=1.5, label="converged value")
        ax.plot(steps, history[:, 0, 0], color="tab:blue")
        ax.set(title=title, xlabel="Iterations", xlim=(0, len(history) - 1))
    axes[0].set_ylabel("Q-value$(s_0, a_0)$")
    axes[0].legend(loc="lower right")
    save_figure(fig, path)


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    mdp = MDP.from_params(cfg.transition_probabilities, cfg.rewards)
    iteration = cfg.q_value_iteration
    histories = {gamma: q_value_iteration(mdp, gamma, iteration.iterations) for gamma in iteration.discounts}
    ql = cfg.q_learning
    learning = q_learning(mdp, transitions=ql.transitions, learning_rate=ql.learning_rate,
                          learning_rate_decay=ql.learning_rate_decay, discount=ql.discount,
                          start_state=ql.start_state, seed=ql.seed)
    reference = histories[ql.discount][-1]
    learned = learning[-1]
    possible = mdp.possible

    write_npy(f"{DATA}/q_value_iteration_history.npy", np.stack([histories[g] for g in iteration.discounts]))
    write_npy(f"{DATA}/q_learning_history.npy", learning)
    write_csv(f"{REPORTS}/q_value_iteration_curve.csv", pd.DataFrame({
        "iteration": np.arange(iteration.iterations + 1), "q_s0_a0": histories[ql.discount][:, 0, 0]}))
    write_csv(f"{REPORTS}/q_learning_curve.csv", pd.DataFrame({
        "iteration": np.arange(ql.transitions + 1), "q_s0_a0": learning[:, 0, 0]}))
    plot_q_s0_a0(histories[ql.discount], learning, float(reference[0, 0]), f"{REPORTS}/q_value_plot.png")
    write_json(f"{REPORTS}/metrics.json", {
        "q_value_iteration": {
            f"{gamma:g}": {
                "q_values": table(history[-1]),
                "policy": greedy_policy(history[-1]),
                "last_sweep_max_change": float(np.max(np.abs(history[-1][possible] - history[-2][possible]))),
            }
            for gamma, history in histories.items()
        },
        "q_learning": {
            "discount": ql.discount,
            "q_values": table(learned),
            "policy": greedy_policy(learned),
            "max_abs_error_vs_iteration": float(np.max(np.abs(learned[possible] - reference[possible]))),
            "policy_matches_iteration": greedy_policy(learned) == greedy_policy(reference),
        },
    })
    for gamma, history in histories.items():
        print(f"Q-value iteration, discount {gamma:g}: greedy policy {greedy_policy(history[-1])}")
    print(f"Q-learning, discount {ql.discount:g}: greedy policy {greedy_policy(learned)}")


if __name__ == "__main__":
    run_stage(main)
