"""Pipeline stages: one package per experiment of chapter 18 (its typed settings in
``__init__.py``, the experiment in ``__main__.py``), run as ``python -m stages.<name>``.

Importing this package is the one place that prepares the process for TensorFlow and rendering,
so every stage, test and helper gets the same settings before TensorFlow is first imported.
"""

import os

# TF-Agents 0.19 needs the Keras 2 API (tf-keras); TensorFlow reads this once, at import.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Rendering goes to arrays (rgb_array); pygame must not look for a display or a sound card.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("MPLBACKEND", "Agg")
