"""One action at a time: the original policy against its bundled TFLite models, on this CPU.

    python -m benchmarks.pi_latency [--calls 2000]

Reads the bundle the pi_bundle stage wrote (data/pi_bundle) and the policy index, times each
model on the policy's first held-out sample observation, interleaved in one run, and prints the
median and 99th percentile with the speed-up over the original and the model sizes, beside what
the manifest says of each model: whether the int8 model was fine-tuned (quantization-aware) or
quantized after training, its measured action agreement with the original, and which precision
the runner loads by default. The stage records the same measurements in
reports/pi_bundle/benchmark.json.
"""

from __future__ import annotations

import argparse

import numpy as np

import stages  # noqa: F401  (TensorFlow settings before TensorFlow loads)
from pi.policy_runtime import TFLitePolicy, latency, verify_bundle
from stages.policies.index import INDEX_DIR, load_index, load_policy
from stages.pi_bundle.__main__ import BUNDLE
from stages.pi_bundle.records import PRECISIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    manifest, index = verify_bundle(BUNDLE), load_index(INDEX_DIR)
    print(f"{'policy':38} {'variant':8} {'median us':>10} {'p99 us':>10} {'speed-up':>9} {'size KB':>9}  "
          f"{'agreement':>9}  model")
    for name, spec in sorted(manifest["policies"].items()):
        if name not in index:
            print(f"{name}: bundled, but not in {INDEX_DIR} (a policy since removed): no original to time")
            continue
        if index[name].output == "tf_agents_policy":
            import tf_agents.policies  # noqa: F401  (registers a saved policy's types)
        observation = np.load(BUNDLE / spec["sample"]["file"], allow_pickle=False)[0]
        players = {"original": load_policy(index[name]),
                   **{p: TFLitePolicy(BUNDLE, spec, p).actions for p in PRECISIONS}}
        sizes = {"original": None, **{p: spec["models"][p]["size_bytes"] for p in PRECISIONS}}
        times = {variant: latency(act, observation, args.calls) for variant, act in players.items()}
        base = times["original"]["median_wall_time_s"]
        for variant, measured in times.items():
            median, p99 = measured["median_wall_time_s"], measured["p99_wall_time_s"]
            size = f"{sizes[variant] / 1024:9.1f}" if sizes[variant] else f"{'':9}"
            print(f"{name:38} {variant:8} {median * 1e6:10.1f} {p99 * 1e6:10.1f} "
                  f"{base / median:8.1f}x {size}  {described(spec, variant)}")


def described(spec: dict, variant: str) -> str:
    """The measured agreement and the kind of a bundled model, as the manifest records them."""
    if variant not in spec["models"]:
        return f"{'':9}  the original"
    model = spec["models"][variant]
    agreement = f"{model['measured']['action_agreement']:9.4f}"
    kind = "float32" if variant == "float32" else (
        "int8, quantization-aware fine-tuned" if model.get("fine_tuned") else "int8, post-training quantized")
    default = ", the default" if spec["default_precision"] == variant else ""
    unsafe = ", marked unsafe" if variant == "int8" and not model.get("safe") else ""
    return f"{agreement}  {kind}{default}{unsafe}"


if __name__ == "__main__":
    main()
