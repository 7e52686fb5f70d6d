"""How a TFLite model compares with the original policy, and the precision the runner loads.

Outputs and actions are compared on held-out observations (ties, where the original's choice is
closer than ``float32_tolerance``, counted apart); the float32 model must act as the original, and
the int8 model becomes the default precision only where it keeps enough of the original's actions
and plays as well. A continuous action (``continuous_action``: the output is the action vector)
has no choice to flip and no ties: the same action there means no component farther than a
tolerance from the original's (``float32_tolerance`` for the float32 model, the environment's
``action_tolerance`` for the int8 one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pi.policy_runtime import denormalize, dequantize, normalize, quantize
from stages.pi_bundle import Settings
from stages.pi_bundle.records import Parity
from stages.pi_bundle.tflite import Int8Model


def batched(function: Callable[[np.ndarray], np.ndarray], observations: np.ndarray,
            size: int = 1024) -> np.ndarray:
    return np.concatenate([function(observations[i:i + size]) for i in range(0, len(observations), size)])


def same_actions(actions: np.ndarray, reference: np.ndarray, tolerance: float | None = None) -> np.ndarray:
    """Per observation, whether ``actions`` are the ``reference`` ones: equal (discrete actions),
    or, given a ``tolerance`` (continuous actions, one vector per observation), no component
    farther than it from the reference's."""
    if tolerance is None:
        return actions == reference
    difference = np.abs(np.asarray(actions, np.float64) - np.asarray(reference, np.float64))
    return difference.reshape(len(difference), -1).max(axis=1) <= tolerance


def agreement(act: Callable[[np.ndarray], np.ndarray], observations: np.ndarray, reference: np.ndarray,
              tolerance: float | None = None) -> float:
    """Share of ``observations`` on which ``act`` chooses the ``reference`` actions (within
    ``tolerance``, for continuous actions: :func:`same_actions`)."""
    return float(np.mean(same_actions(batched(act, observations), reference, tolerance)))


def margins(output: str, reference: np.ndarray) -> np.ndarray:
    """How far each of the original's outputs is from choosing another action (inf: no margin
    to speak of, the output being the action itself)."""
    if output == "p_left":
        return np.abs(reference.reshape(len(reference)) - 0.5)
    if output in ("action_probabilities", "q_values"):
        top_two = np.sort(reference, axis=1)[:, -2:]
        return top_two[:, 1] - top_two[:, 0]
    return np.full(len(reference), np.inf)


def parity(reference: np.ndarray, reference_actions: np.ndarray, outputs: np.ndarray,
           actions: np.ndarray, ties: np.ndarray, tolerance: float | None = None) -> Parity:
    """Outputs and actions against the original's; continuous actions agree within ``tolerance``
    (recorded as ``action_tolerance``), discrete ones when equal."""
    same = same_actions(actions, reference_actions, tolerance)
    difference = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    return Parity(
        observations=len(reference),
        max_abs_diff=float(np.max(difference)),
        # relative to the output's size where it exceeds 1 (Q-values near 100 have ulps of 1e-5)
        max_scaled_diff=float(np.max(difference / np.maximum(1.0, np.abs(reference)))),
        action_agreement=float(np.mean(same)),
        action_agreement_without_ties=float(np.mean(same[~ties])) if (~ties).any() else 1.0,
        ties=int(ties.sum()),
        **({"action_tolerance": tolerance} if tolerance is not None else {}),
    )


def input_rounding_agreement(normalization: Mapping[str, Sequence[float]] | None, tensor: Mapping[str, Any],
                             original: Callable[[np.ndarray], np.ndarray], observations: np.ndarray,
                             reference_actions: np.ndarray, tolerance: float | None = None) -> float | None:
    """The original policy's action agreement with itself when only its input is rounded to the
    int8 model's input grid (its ``normalization`` and input ``tensor``; float weights and
    activations otherwise): how much of the int8 model's disagreement the 8-bit input alone causes.
    None when the int8 model's input is not quantized (integer observations such as Atari frames)."""
    if normalization is None or tensor["scale"] is None:
        return None
    grid = dequantize(quantize(normalize(observations, normalization), tensor), tensor)
    rounded = denormalize(grid, normalization).astype(observations.dtype)
    return agreement(original, rounded, reference_actions, tolerance)


def expected_int8_outputs(int8: Int8Model, reference: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """The outputs the int8 model approximates, in its own representation."""
    if int8.float_outputs is not None:
        return int8.float_outputs(held_out)
    if int8.teacher is not None:
        normalization = int8.input_normalization
        center, scale = (np.asarray(normalization[key], np.float32) for key in ("center", "scale"))
        return int8.teacher.preferences((held_out - center) / scale)
    if int8.q_differences:
        return reference - reference[:, :1]
    return reference


def check_float32(cfg: Settings, policy: str, result: Parity) -> None:
    """The float32 model must act as the original: a bundle that does not is not written.

    Outputs may differ by ``float32_tolerance``, scaled by the output's size above 1: float32
    sums taken in another order differ by a few units in the last place.
    """
    if result.max_scaled_diff > cfg.float32_tolerance or result.action_agreement_without_ties < 1.0:
        raise RuntimeError(f"{policy}: the float32 TFLite model differs from the original "
                           f"(max |diff| / max(1, |output|) {result.max_scaled_diff:.3g}, action "
                           f"agreement without ties {result.action_agreement_without_ties:.6f})")


def default_precision(agreement: float, target: float, int8_return: float,
                      float32_interval: tuple[float, float], tolerance: float | None = None) -> tuple[str, str]:
    """The precision the runner loads by default, and why: int8 only where it keeps at least
    ``target`` of the held-out actions (continuous ones: within ``tolerance``) AND its mean return
    lies inside the float32 policy's interval; float32 otherwise."""
    low, high = float32_interval
    kept = ("int8 chooses the original's action" if tolerance is None
            else f"int8's action lies within {tolerance:g} of the original's")
    if agreement < target:
        return "float32", (f"{kept} on {agreement:.2%} of held-out observations, "
                           f"below the {target:.0%} target")
    if not low <= int8_return <= high:
        return "float32", (f"int8's mean return {int8_return:g} lies outside the float32 policy's interval "
                           f"[{low:g}, {high:g}]")
    return "int8", (f"{kept} on {agreement:.2%} of held-out observations "
                    f"(target {target:.0%}) and its mean return {int8_return:g} lies inside the float32 "
                    f"policy's interval [{low:g}, {high:g}]")
