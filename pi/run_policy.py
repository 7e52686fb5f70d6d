#!/usr/bin/env python3
"""Run a bundled policy on a Raspberry Pi (or anywhere) with the LiteRT runtime: no TensorFlow.

    python3 run_policy.py list
    python3 run_policy.py play NAME [--precision float32|int8] [--episodes 20] [--seed 0] [--max-steps N]
    python3 run_policy.py act NAME observations.npy [--precision float32|int8]
    python3 run_policy.py time NAME [--calls 1000]

``play`` needs Gymnasium (and ale-py for Atari games) and prints one return per episode; ``act``
needs only NumPy and LiteRT and prints one action per observation (a continuous action: its
components on one line, separated by spaces); ``time`` times one action of
each bundled model of the policy on its first sample observation (median and 99th percentile, on
this machine) beside its size and measured agreement. Before anything is loaded,
every file of the bundle is checked against the sha256 in manifest.json; a bundle that does not
match ends the program with a message and exit status 3. Nothing is ever unpickled.

Without ``--precision`` the policy's default precision in the manifest is loaded: int8 only where
the bundle measured that its int8 model keeps the float policy's actions and returns, float32
otherwise. An int8 model the manifest marks unsafe is refused (exit status 5) unless
``--allow-unsafe-int8`` is given. The precision loaded, and why, is printed on stderr.

The checks, the models, the action rules and the Atari preprocessing are in policy_runtime.py,
next to this file: the very module the pipeline used to train and evaluate the policies.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

try:  # imported by the pipeline (benchmarks, the bundle stage): the package's own module
    from pi.policy_runtime import BundleError, TFLitePolicy, latency, make_env, play, policy_spec, verify_bundle
except ImportError:  # run as a script, in the bundle or in pi/: policy_runtime.py lies next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from policy_runtime import BundleError, TFLitePolicy, latency, make_env, play, policy_spec, verify_bundle

EXIT_BAD_BUNDLE = 3
EXIT_BAD_INPUT = 4
EXIT_UNSAFE_MODEL = 5
PRECISIONS = ("float32", "int8")


class UnsafeModelError(Exception):
    """An int8 model the manifest marks unsafe was requested without --allow-unsafe-int8."""


# --- which model ------------------------------------------------------------------------------


def agreement_text(measured: dict) -> str | None:
    """A model's measured action agreement as a percentage (a continuous action's: within its
    tolerance), or None where it was not measured."""
    agreement = measured.get("action_agreement")
    if agreement is None:
        return None
    tolerance = measured.get("action_tolerance")
    return f"{agreement:.2%}" + ("" if tolerance is None else f" within {tolerance:g}")


def choose_precision(spec: dict, name: str, requested: str | None = None,
                     allow_unsafe_int8: bool = False) -> tuple[str, str]:
    """The precision to load for policy ``name`` and why, in words.

    Without a request: the manifest's ``default_precision`` (int8 only where its measured
    actions and returns matched the float policy's). A requested int8 model that the manifest
    marks unsafe raises :class:`UnsafeModelError` naming its measured agreement, unless
    ``allow_unsafe_int8``.
    """
    default = spec.get("default_precision", "float32")
    if requested is None:
        return default, f"the manifest's default ({spec.get('default_reason', 'no reason recorded')})"
    if requested not in spec["models"]:
        raise BundleError(f"policy {name} has no {requested} model; it has {', '.join(spec['models'])}")
    int8 = spec["models"].get("int8", {})
    if requested == "int8" and not int8.get("safe", False):
        agreement = agreement_text(int8.get("measured", {})) or "not measured"
        problem = (f"policy {name}: the manifest marks its int8 model unsafe (action agreement with the "
                   f"float policy {agreement} on held-out observations; {int8.get('unsafe_reason', 'no reason given')})")
        if not allow_unsafe_int8:
            raise UnsafeModelError(f"{problem}. Use --precision float32 (or no --precision: the default "
                                   f"is {default}), or --allow-unsafe-int8 to run it anyway")
        return "int8", f"requested with --allow-unsafe-int8 ({problem})"
    return requested, "requested"


# --- timing ---------------------------------------------------------------------------------------


def time_models(bundle: Path, name: str, spec: dict, calls: int) -> list[str]:
    """One line per bundled model of policy ``name``: its latency here, size, measured agreement
    and whether the runner loads it by default. Timing acts on nothing, so an int8 model marked
    unsafe is timed too (and said to be unsafe)."""
    observation = np.load(bundle / spec["sample"]["file"], allow_pickle=False)[0]
    lines = [f"{name}: one action on its first sample observation, {calls} calls after a warm-up"]
    for precision, model in spec["models"].items():
        measured = latency(TFLitePolicy(bundle, spec, precision).actions, observation, calls)
        agreement = agreement_text(model.get("measured", {}))
        notes = [f"action agreement {agreement}" if agreement is not None else "agreement not measured"]
        if spec.get("default_precision", "float32") == precision:
            notes.append("the default")
        if precision == "int8":
            notes.append("fine-tuned" if model.get("fine_tuned") else "post-training quantized")
            notes.append("safe" if model.get("safe") else "marked unsafe")
        lines.append(f"  {precision:8} median {measured['median_wall_time_s'] * 1e6:9.1f} us  "
                     f"p99 {measured['p99_wall_time_s'] * 1e6:9.1f} us  {model['size_bytes'] / 1024:8.1f} KiB  "
                     f"({', '.join(notes)})")
    return lines


# --- the command line -------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent,
                        help="the bundle's folder (default: this script's folder)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the bundled policies")
    timing = commands.add_parser("time", help="time one action of each bundled model of a policy")
    timing.add_argument("policy")
    timing.add_argument("--calls", type=int, default=1000, help="timed calls per model (default 1000)")
    for name, text in (("play", "play episodes in the policy's Gymnasium environment"),
                       ("act", "print the action for each observation in a .npy file")):
        command = commands.add_parser(name, help=text)
        command.add_argument("policy")
        if name == "act":
            command.add_argument("observations", type=Path)
        command.add_argument("--precision", choices=PRECISIONS, default=None,
                             help="the model to load (default: the policy's default precision in the manifest)")
        command.add_argument("--allow-unsafe-int8", action="store_true",
                             help="load an int8 model even though the manifest marks it unsafe (its measured "
                                  "actions or returns differ from the float policy's)")
        if name == "play":
            command.add_argument("--episodes", type=int, default=10)
            command.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
            command.add_argument("--max-steps", type=int, default=None,
                                 help="cap on steps per episode (default: the manifest's)")
    return parser.parse_args(argv)


NPY_MAGIC = b"\x93NUMPY"


def load_observations(path: Path, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The observations in a .npy file (numpy.save), one per row; the file's header is read first,
    so that a file of another kind, one of Python objects (never unpickled) and a truncated one
    are each named as what they are."""
    try:
        with open(path, "rb") as handle:
            is_npy = handle.read(len(NPY_MAGIC)) == NPY_MAGIC
            if is_npy:
                handle.seek(0)
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                stored = read_header(handle)[2]
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except (ValueError, EOFError) as error:
        raise ValueError(f"{path} has a damaged .npy header ({error})") from None
    if not is_npy:
        raise ValueError(f"{path} is not a .npy file (it lacks NumPy's header): save the observations "
                         "with numpy.save")
    if stored.hasobject:
        raise ValueError(f"{path} holds Python objects ({stored}), not numbers: pickles are refused")
    try:
        observations = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path} is a damaged or truncated .npy file ({error})") from None
    if observations.shape == shape:
        observations = observations[None]
    if observations.shape[1:] != shape:
        raise ValueError(f"{path} holds observations of shape {observations.shape[1:]}, the policy "
                         f"takes {shape} (one per row)")
    return observations.astype(dtype)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "play" and (args.episodes < 1 or (args.max_steps is not None and args.max_steps < 1)):
        option = f"--episodes {args.episodes}" if args.episodes < 1 else f"--max-steps {args.max_steps}"
        print(f"error: {option}: at least 1 is needed", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        manifest = verify_bundle(args.bundle)
        if args.command == "list":
            for name, spec in sorted(manifest["policies"].items()):
                print(f"{name}: {spec['env_id']}, observations {spec['observation_shape']} "
                      f"{spec['observation_dtype']}, {spec['output']} -> {spec['action_rule']}; "
                      f"default precision {spec.get('default_precision', 'float32')}")
            return 0
        spec = policy_spec(manifest, args.policy)
        if args.command == "time":
            if args.calls < 1:
                print(f"error: --calls {args.calls}: at least one call is needed", file=sys.stderr)
                return EXIT_BAD_INPUT
            print("\n".join(time_models(args.bundle, args.policy, spec, args.calls)))
            return 0
        precision, why = choose_precision(spec, args.policy, args.precision, args.allow_unsafe_int8)
        policy = TFLitePolicy(args.bundle, spec, precision)
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_BUNDLE
    except UnsafeModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNSAFE_MODEL
    agreement = agreement_text(spec["models"][precision].get("measured", {}))
    measured = "" if agreement is None else f"; action agreement with the original {agreement}"
    print(f"{args.policy}: loaded the {precision} model {spec['models'][precision]['file']} ({why}{measured})",
          file=sys.stderr, flush=True)
    try:
        if args.command == "act":
            observations = load_observations(args.observations, policy.observation_shape,
                                             spec["observation_dtype"])
            for action in policy.actions(observations):  # an index, or a continuous action's vector
                print(" ".join(repr(float(x)) for x in action) if np.ndim(action) else int(action))
            return 0
        env = make_env(spec, args.max_steps)
    except ImportError as error:
        print(f"error: playing needs Gymnasium (pip install -r requirements-pi-gymnasium.txt): {error}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    returns = []
    for episode in range(args.episodes):
        returns.append(play(policy, env, args.seed + episode))
        print(f"episode {episode} seed {args.seed + episode} return {returns[-1]:g}", flush=True)
    env.close()
    print(f"mean return {np.mean(returns):g} over {len(returns)} episodes "
          f"({args.policy}, {precision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
