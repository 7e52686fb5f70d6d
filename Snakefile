# Snakemake view of the pipeline. Nothing here declares a stage: every rule is built from
# dvc.yaml (read by DVC's own parser in stages/core/dag.py), so the two engines cannot drift.
# Added here only what Snakemake alone needs: a log and a timing (benchmark) file per rule,
# threads and resources from each stage's `meta`, figures and GIFs as items of Snakemake's own
# report (`snakemake --report report.html`), recording finished stages in dvc.lock so that
# `dvc status` is clean after a Snakemake run, and per stage a stamp dated by dvc.lock, so that
# Snakemake reruns what DVC would, whichever engine ran last (pipeline/dvc_stamps.py).

import os
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)
envvars:
    "PATH",


# Stage commands say `python`: make it the interpreter running Snakemake, activated or not.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

from stages.core.dag import PENDING_DIR, StageSpec, clear_stale_backups, read_dag, record_in_dvc_lock
from pipeline.dvc_stamps import source_files, stamp_path, write_stamps
from stages.core.settings import ParamError, read_params_file
from pipeline.validation import validate_pipeline

# params.yaml read first: a YAML error is reported with its line and column, where DVC's parser
# (read_dag's) would only say that the file is corrupted.
try:
    read_params_file()
except ParamError as error:
    raise WorkflowError(f"invalid parameters: {error}") from None
STAGES = read_dag(workflow.basedir)

# A bad parameter stops the workflow here, before any job runs or any output is removed: every
# stage's settings are read as the stage itself reads them (pipeline/validation.py).
try:
    validate_pipeline(STAGES)
except ParamError as error:
    raise WorkflowError(f"invalid parameters: {error}") from None

# dvc.lock decides which stages changed (command, parameters, code). A job on a cluster node reads
# this file again: the stamps are the submitting process's to write.
if not workflow.remote_exec:
    write_stamps(STAGES, workflow.basedir)
    clear_stale_backups(workflow.basedir)


def _output(path):
    # update(): Snakemake leaves the previous output in place while the job runs and restores it
    # if the job fails (stages replace their outputs atomically), as DVC does with `persist`.
    path = update(directory(path) if StageSpec.is_directory(path) else path)
    # Figures and GIFs appear in `snakemake --report report.html`, one category per stage folder.
    if StageSpec.is_report_item(path):
        return report(path, category=Path(path).parent.as_posix())
    return path


rule all:
    default_target: True
    input:
        [out for stage in STAGES for out in stage.outs],


def declare_rule(stage):
    # Inside a function so that each rule's shell command binds its own stage: Snakemake
    # evaluates the shell expression when the job runs, after a loop variable has moved on.
    sources = set(source_files(stage, STAGES))
    rule:
        name:
            stage.rule_name
        input:
            # Source files count by their hash, in the stamp; other stages' outputs by their date.
            [ancient(dep) if dep in sources else dep for dep in stage.inputs],
            # Newer than the outputs when the stage differs from its dvc.lock entry.
            dvc_lock=stamp_path(stage.name),
        output:
            [_output(out) for out in stage.outs],
        params:
            # Resumable state the stage keeps between runs: not an output, so never deleted.
            state=stage.state,
        log:
            f"logs/{stage.name}.log",
        benchmark:
            f"logs/benchmarks/{stage.name}.tsv"
        threads: stage.meta.get("threads", 1)
        resources:
            mem_mb=stage.meta.get("mem_mb", 1000),
            runtime=stage.meta.get("runtime", 60),
        shell:
            "({cmd}) 2>&1 | tee {{log}} && mkdir -p {pending} && touch {pending}/{name}".format(
                cmd=stage.cmd.replace("{", "{{").replace("}", "}}"),
                pending=PENDING_DIR,
                name=stage.name,
            )


for _stage in STAGES:
    declare_rule(_stage)


onsuccess:
    record_in_dvc_lock(workflow.basedir)


onerror:
    record_in_dvc_lock(workflow.basedir)
