"""Tooling around the pipeline, imported by no stage: derived dependencies, parameter
validation, quick-profile workspaces, the reproduction check, pulls from the DVC remote and
Snakemake's view of dvc.lock."""
