"""What every stage runs on: its settings and parameters, atomic outputs, seeds, the DAG as
dvc.yaml declares it, timings, the stage lock, training logs, figures and frames."""
