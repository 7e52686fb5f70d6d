"""Machinery shared by every stage: parameters, files, seeds, plots, frames, evaluation, adapters."""
