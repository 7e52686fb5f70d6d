"""Held-out evaluation: episodes played side by side against one episode at a time.

    python -m benchmarks.evaluation_speed [--policy pg_cartpole] [--episodes 100] [--max-steps 200]

Both play the same exported policy (data/policies/<policy>, loaded as the evaluate stage loads
it) on the same seeds with ``stages.policies.evaluation.evaluate_policy``; the only difference is
the batch: all episodes at once (one batched policy call per step, what the evaluate stage does)
or one episode per call (``batch_size=1``). The returns must be identical; the ratio of the two
wall times is the speed-up. Each way runs ``--repeats`` times, interleaved, best time kept.
"""

from __future__ import annotations

import argparse
import time

import stages  # noqa: F401, I001  (first: selects Keras 2 before TensorFlow is imported)

import numpy as np

from stages.policies.evaluation import evaluate_policy
from stages.policies.index import INDEX_DIR, load_policy, read_entry


def timed(play) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = play()
    return time.perf_counter() - start, result.returns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="pg_cartpole_s42", help="a CartPole policy in data/policies")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    entry = read_entry(INDEX_DIR / args.policy)
    policy = load_policy(entry)
    seeds = list(range(1_000_000, 1_000_000 + args.episodes))
    play = dict(max_steps=args.max_steps, env_kwargs=entry.env_kwargs, progress=False)
    evaluate_policy(entry.env_id, policy, seeds[:2], **play)  # trace the policy's graph first

    together, alone = [], []
    for _ in range(args.repeats):
        together.append(timed(lambda: evaluate_policy(entry.env_id, policy, seeds, batch_size=len(seeds), **play)))
        alone.append(timed(lambda: evaluate_policy(entry.env_id, policy, seeds, batch_size=1, **play)))
    (t_together, r_together), (t_alone, r_alone) = min(together, key=lambda t: t[0]), min(alone, key=lambda t: t[0])
    if not np.array_equal(r_together, r_alone):
        raise SystemExit("the two ways gave different returns: the benchmark compares unequal work")

    steps = int(r_together.sum()) if entry.env_id.startswith("CartPole") else None
    print(f"{args.policy} on {entry.env_id}: {args.episodes} episodes of at most {args.max_steps} steps, "
          f"mean return {r_together.mean():.1f}" + (f", {steps} steps in all" if steps else ""))
    print(f"  side by side (one policy call per step for all episodes): {t_together:8.3f} s")
    print(f"  one episode at a time (one policy call per step):          {t_alone:8.3f} s")
    print(f"  speed-up: {t_alone / t_together:.1f}x")


if __name__ == "__main__":
    main()
