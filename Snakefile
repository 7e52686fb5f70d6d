# Snakemake view of the pipeline. Nothing here declares a stage: every rule is built from
# dvc.yaml (read by DVC's own parser in stages/common/dag.py), so the two engines cannot drift.
# Added here only what Snakemake alone needs: a log and a timing (benchmark) file per rule,
# threads and resources from each stage's `meta`, figures and GIFs as items of Snakemake's own
# report (`snakemake --report report.html`), and recording finished stages in dvc.lock so that
# `dvc status` is clean after a Snakemake run.

import os
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)
envvars:
    "PATH",


# Stage commands say `python`: make it the interpreter running Snakemake, activated or not.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

from stages.common.dag import PENDING_DIR, StageSpec, read_dag, record_in_dvc_lock
from stages.common.settings import ParamError, read_params_file
from stages.common.validation import validate_pipeline

# params.yaml read first: a YAML error is reported with its line and column, where DVC's parser
# (read_dag's) would only say that the file is corrupted.
try:
    read_params_file()
except ParamError as error:
    raise WorkflowError(f"invalid parameters: {error}") from None
STAGES = read_dag(workflow.basedir)

# A bad parameter stops the workflow here, before any job runs or any output is removed: every
# stage's settings are read as the stage itself reads them (stages/common/validation.py).
try:
    validate_pipeline(STAGES)
except ParamError as error:
    raise WorkflowError(f"invalid parameters: {error}") from None


def _output(path):
    if StageSpec.is_directory(path):
        return directory(path)
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
    rule:
        name:
            stage.rule_name
        input:
            stage.inputs,
        output:
            [_output(out) for out in stage.outs],
        params:
            # The parameter values the stage reads: Snakemake reruns the rule when they change.
            dvc_params=stage.params,
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
