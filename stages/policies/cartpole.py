"""The book's hard-coded CartPole policy, shared by the stage that measures it and the network
that imitates it."""

from __future__ import annotations

import numpy as np

POLE_ANGLE = 2  # index in CartPole's observation: cart position, cart velocity, pole angle, angular velocity
LEFT, RIGHT = 0, 1


def basic_policy(observations: np.ndarray) -> np.ndarray:
    """Push left when the pole leans left (negative angle), right otherwise; one action per row."""
    return np.where(observations[..., POLE_ANGLE] < 0, LEFT, RIGHT)
