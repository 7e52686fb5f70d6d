"""The reproduction check: digests beside dvc.lock (measured timings aside), and the verdict per stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline import reproduction
from stages.core.html import volatile
from pipeline.reproduction import (
    DIGESTS, LOCK, check, file_digests, fingerprint, read_lock, reproducible_bytes)


def _only_the_timing_is_ignored(file: Path, recorded: str, other_timing: str, other_result: str) -> None:
    """``file`` written as ``recorded``: in a stage that measures time a new timing leaves its digest
    alone, a new result does not; in any other stage the timing counts as a result (it has no place
    in a stage's outputs: logs/timings/ holds it), a volatile span aside."""
    file.write_text(recorded)
    before, strict = reproducible_bytes(file, timings=True), reproducible_bytes(file)
    file.write_text(other_timing)
    assert reproducible_bytes(file, timings=True) == before
    assert (reproducible_bytes(file) == strict) is (file.suffix == ".html")
    file.write_text(other_result)
    assert reproducible_bytes(file, timings=True) != before


def test_timings_and_volatile_spans_are_left_out_and_nothing_else(tmp_path):
    _only_the_timing_is_ignored(
        tmp_path / "metrics.json",
        json.dumps({"mean": 1.5, "training": {"wall_time_s": 3.2, "steps": 7}}),
        json.dumps({"mean": 1.5, "training": {"wall_time_s": 9.9, "steps": 7}}),
        json.dumps({"mean": 1.5, "training": {"wall_time_s": 3.2, "steps": 8}}))
    _only_the_timing_is_ignored(
        tmp_path / "training_log.csv",
        "iteration,mean_return,wall_time_s\n1,2.0,0.5\n",
        "iteration,mean_return,wall_time_s\n1,2.0,0.7\n",
        "iteration,mean_return,wall_time_s\n1,2.5,0.5\n")
    _only_the_timing_is_ignored(  # DVCLive's layout, tab-separated
        tmp_path / "mean_return.tsv",
        "step\tmean_return\ttrain_wall_time_s\n1\t2.0\t0.5\n",
        "step\tmean_return\ttrain_wall_time_s\n1\t2.0\t0.9\n",
        "step\tmean_return\ttrain_wall_time_s\n1\t2.5\t0.5\n")
    _only_the_timing_is_ignored(
        tmp_path / "index.html",
        f"<p>{volatile('took 3 s')}</p><p>return 12</p>",
        f"<p>{volatile('took 4 s on another host')}</p><p>return 12</p>",
        f"<p>{volatile('took 3 s')}</p><p>return 13</p>")


def _workspace(root: Path) -> dict:
    """Two recorded stages: ``train`` (a folder and a metrics file) and ``plot`` reading it."""
    (root / "data/train").mkdir(parents=True)
    (root / "data/train/model.bin").write_bytes(b"\x00weights")
    (root / "reports").mkdir()
    (root / "reports/metrics.json").write_text(json.dumps({"return": 10}))
    (root / "reports/curve.png").write_bytes(b"png")
    (root / "train.py").write_text("print('train')\n")
    (root / "page.html").write_text("<p>10</p>")
    lock = {"schema": "2.0", "stages": {
        "train": {"cmd": "python train.py",
                  "deps": [{"path": "train.py", "md5": "aaa"}],
                  "params": {"params.yaml": {"train": {"lr": 0.01}}},
                  "outs": [{"path": "data/train", "md5": "x.dir"},
                           {"path": "reports/metrics.json", "md5": "y"}]},
        "plot": {"cmd": "python plot.py",
                 "deps": [{"path": "data/train", "md5": "x.dir"}],
                 "outs": [{"path": "reports/curve.png", "md5": "z"}]},
        # A consumer of a folder holding other stages' outputs, as the report reads reports/<stage>.
        "page": {"cmd": "python page.py",
                 "deps": [{"path": "reports", "md5": "r.dir"}, {"path": "page.py", "md5": "p"}],
                 "outs": [{"path": "page.html", "md5": "h"}]}}}
    (root / LOCK).write_text(yaml.safe_dump(lock))
    produced = {"data/train", "reports/metrics.json", "reports/curve.png", "page.html"}
    entries = read_lock(root)
    return {"stages": {
        name: {"inputs": fingerprint(entries[name], produced),
               "files": file_digests(root, [o["path"] for o in entries[name]["outs"]])}
        for name in entries}}


def _verdicts(root: Path, recorded: dict) -> dict[str, tuple[str, list[str]]]:
    return {v.stage: (v.result, v.files) for v in check(root, recorded)}


def test_a_rerun_is_reproduced_and_a_timing_in_a_result_is_a_difference(tmp_path):
    recorded = _workspace(tmp_path)
    (tmp_path / "reports/metrics.json").write_text(json.dumps({"return": 10}, indent=2))  # same content
    verdicts = _verdicts(tmp_path, recorded)
    assert verdicts["train"] == ("reproduced", ["2 files"])
    assert verdicts["plot"] == ("reproduced", ["1 files"])
    (tmp_path / "reports/metrics.json").write_text(json.dumps({"return": 10, "wall_time_s": 7.5}))
    assert _verdicts(tmp_path, recorded)["train"] == ("differs", ["reports/metrics.json"])


def test_a_machine_dependent_gif_is_a_known_difference_and_anything_more_is_not(tmp_path):
    gif = tmp_path / "reports/pg_lunarlander/book/s42/policy.gif"
    gif.parent.mkdir(parents=True)
    gif.write_bytes(b"GIF89a one machine")
    (tmp_path / "reports/pg_lunarlander/book/s42/metrics.json").write_text('{"return": 1}')
    outputs = ["reports/pg_lunarlander/book/s42/policy.gif", "reports/pg_lunarlander/book/s42/metrics.json"]
    lock = {"schema": "2.0", "stages": {"pg_lunarlander@book-42": {
        "cmd": "python -m stages.pg_lunarlander", "outs": [{"path": p, "md5": "m"} for p in outputs]}}}
    (tmp_path / LOCK).write_text(yaml.safe_dump(lock))
    entry = read_lock(tmp_path)["pg_lunarlander@book-42"]
    recorded = {"stages": {"pg_lunarlander@book-42": {"inputs": fingerprint(entry, set(outputs)),
                                                      "files": file_digests(tmp_path, outputs)}}}
    gif.write_bytes(b"GIF89a another machine")
    assert _verdicts(tmp_path, recorded)["pg_lunarlander@book-42"] == ("differs (known)", [outputs[0]])
    assert reproduction.main(["check", "--dir", str(tmp_path)]) == 2  # no record file yet: refused
    (tmp_path / DIGESTS).write_text(yaml.safe_dump(recorded))
    assert reproduction.main(["check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "reports/pg_lunarlander/book/s42/metrics.json").write_text('{"return": 2}')
    assert _verdicts(tmp_path, recorded)["pg_lunarlander@book-42"][0] == "differs"
    assert reproduction.main(["check", "--dir", str(tmp_path)]) == 1


def test_a_changed_added_or_missing_file_is_named(tmp_path):
    recorded = _workspace(tmp_path)
    (tmp_path / "data/train/model.bin").write_bytes(b"\x01weights")
    (tmp_path / "data/train/extra.bin").write_bytes(b"new")
    (tmp_path / "reports/metrics.json").unlink()
    result, files = _verdicts(tmp_path, recorded)["train"]
    assert result == "differs"
    assert files == ["data/train/extra.bin", "data/train/model.bin", "reports/metrics.json"]


def test_absent_resumable_state_is_named_and_present_state_is_compared(tmp_path):
    """A workspace that pulled its outputs has no resumable state (DVC does not cache it): the
    rest of the stage is compared and the state named; state that is there is compared."""
    import shutil

    recorded = _workspace(tmp_path)
    (tmp_path / "data/train/model.bin").write_bytes(b"\x01weights")
    verdicts = {v.stage: (v.result, v.files) for v in check(tmp_path, recorded, resumable={"data/train"})}
    assert verdicts["train"] == ("differs", ["data/train/model.bin"])
    shutil.rmtree(tmp_path / "data/train")
    verdicts = {v.stage: (v.result, v.files) for v in check(tmp_path, recorded, resumable={"data/train"})}
    assert verdicts["train"] == ("reproduced", ["1 files", "resumable state not here: data/train"])
    # Not declared resumable: an absent output, named as such (the present ones match).
    assert _verdicts(tmp_path, recorded)["train"][:1] == ("partly here",)


def test_changed_code_or_params_are_told_apart_from_changed_results(tmp_path):
    recorded = _workspace(tmp_path)
    lock = yaml.safe_load((tmp_path / LOCK).read_text())
    lock["stages"]["train"]["params"]["params.yaml"]["train"]["lr"] = 0.02
    # The consumers' dependencies on upstream outputs change too (an output, a folder holding
    # outputs): that is not "other inputs", those are checked as the upstream stages' outputs.
    lock["stages"]["plot"]["deps"][0]["md5"] = "another.dir"
    lock["stages"]["page"]["deps"][0]["md5"] = "another.dir"
    (tmp_path / LOCK).write_text(yaml.safe_dump(lock))
    verdicts = _verdicts(tmp_path, recorded)
    assert verdicts["train"][0] == "other inputs"
    assert verdicts["plot"][0] == "reproduced"
    assert verdicts["page"][0] == "reproduced"
    # The consumer's own code is a source dependency.
    lock["stages"]["page"]["deps"][1]["md5"] = "q"
    (tmp_path / LOCK).write_text(yaml.safe_dump(lock))
    assert _verdicts(tmp_path, recorded)["page"][0] == "other inputs"


def test_stages_not_run_or_not_recorded(tmp_path):
    recorded = _workspace(tmp_path)
    (tmp_path / "reports/curve.png").unlink()
    del recorded["stages"]["train"]
    verdicts = _verdicts(tmp_path, recorded)
    assert verdicts["plot"][0] == "not run"
    assert verdicts["train"][0] == "not recorded"


def test_record_keeps_the_earlier_digests_of_an_unchanged_entry_whose_outputs_are_not_here(tmp_path, monkeypatch):
    """A workspace that reran part of the pipeline records what it has; a stage whose outputs it
    does not have keeps its earlier digests if dvc.lock's entry is the one they were taken from,
    and has none if the entry changed since."""
    recorded = _workspace(tmp_path)
    monkeypatch.setattr(reproduction, "dvc_changed_stages", lambda root: set())
    (tmp_path / "reports/curve.png").unlink()  # plot's output is not in this workspace
    result, kept, skipped = reproduction.record(tmp_path, recorded)
    assert (kept, skipped) == (["plot"], [])
    taken_again = {name: {k: v for k, v in entry.items() if k != "machine"} for name, entry in result["stages"].items()}
    assert taken_again == recorded["stages"]  # train and page taken again (on this CPU), plot kept
    assert "machine" not in result["stages"]["plot"] and "machine" in result["stages"]["train"]
    stale = {"stages": {**recorded["stages"], "plot": {**recorded["stages"]["plot"], "inputs": "another entry"}}}
    result, kept, skipped = reproduction.record(tmp_path, stale)
    assert (kept, skipped) == ([], ["plot"]) and "plot" not in result["stages"]
    assert reproduction.record(tmp_path)[2] == ["plot"]  # no earlier record: left out


def test_check_exits_1_on_a_difference_and_2_without_a_record(tmp_path, capsys):
    recorded = _workspace(tmp_path)
    assert reproduction.main(["check", "--dir", str(tmp_path)]) == 2
    assert "record a run first" in capsys.readouterr().err
    (tmp_path / DIGESTS).write_text(yaml.safe_dump(recorded))
    assert reproduction.main(["check", "--dir", str(tmp_path)]) == 0
    assert "3 reproduced" in capsys.readouterr().out
    (tmp_path / "reports/curve.png").write_bytes(b"other png")
    assert reproduction.main(["check", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "differs" in out and "reports/curve.png" in out


def test_mains_digests_are_taken_from_the_run_dvc_lock_records(repo_root):
    """dvc.digests.yaml may cover fewer stages than dvc.lock (a stage recorded on a machine whose
    outputs are gone has no digests; `check` says "not recorded"), but every digest it holds must
    come from the code, params and command dvc.lock records for that stage, and name a file of
    each of the stage's outputs: a stale record would make `check` report "other inputs" on a
    faithful rerun."""
    lock = read_lock(repo_root)
    recorded = yaml.safe_load((repo_root / DIGESTS).read_text())["stages"]
    produced = {o["path"] for e in lock.values() for o in e.get("outs", [])}
    assert recorded, "dvc.digests.yaml records no stage"
    assert set(recorded) <= set(lock), f"digests of stages dvc.lock does not have: {set(recorded) - set(lock)}"
    stale = [name for name in recorded if fingerprint(lock[name], produced) != recorded[name]["inputs"]]
    assert not stale, f"dvc.digests.yaml was recorded from other inputs for: {stale}"
    for name in recorded:
        files = recorded[name]["files"]
        for out in lock[name].get("outs", []):
            assert any(f == out["path"] or f.startswith(out["path"] + "/") for f in files), \
                f"{name}: no digest for {out['path']}"


@pytest.mark.parametrize("action", ["record", "check"])
def test_help_names_the_file(action, capsys):
    with pytest.raises(SystemExit):
        reproduction.main([action, "--help"])
    assert "dvc.digests.yaml" in capsys.readouterr().out


def test_the_stages_that_measure_time_are_the_benchmark_and_the_pi_conversions():
    from pipeline.reproduction import measures_time

    assert all(measures_time(s) for s in ("replay_benchmark", "pi_bundle", "pi_dqn@dqn-42", "pi_atari_dqn@breakout"))
    assert not any(measures_time(s) for s in ("pg_cartpole@42", "dqn@dqn-42", "evaluate_dqn@dqn-42", "markov_chain"))


def test_a_difference_in_a_stage_recorded_on_another_cpu_says_so_and_does_not_fail(tmp_path, monkeypatch, capsys):
    recorded = _workspace(tmp_path)
    for entry in recorded["stages"].values():
        entry["machine"] = "CPU A (avx2, fma)"
    (tmp_path / "reports/curve.png").write_bytes(b"other png")
    same = {v.stage: (v.result, v.files) for v in check(tmp_path, recorded, machine="CPU A (avx2, fma)")}
    assert same["plot"] == ("differs", ["reports/curve.png"])
    other = {v.stage: (v.result, v.files) for v in check(tmp_path, recorded, machine="CPU B (avx2, fma, avx512f)")}
    assert other["plot"] == ("differs (other CPU)", ["recorded on CPU A (avx2, fma)", "reports/curve.png"])
    assert other["train"][0] == "reproduced"
    (tmp_path / DIGESTS).write_text(yaml.safe_dump(recorded))
    monkeypatch.setattr(reproduction, "this_machine", lambda: "CPU B (avx2, fma, avx512f)")
    assert reproduction.main(["check", "--dir", str(tmp_path)]) == 0
    assert "recorded on another CPU than this one, CPU B" in capsys.readouterr().out
    monkeypatch.setattr(reproduction, "this_machine", lambda: "CPU A (avx2, fma)")
    assert reproduction.main(["check", "--dir", str(tmp_path)]) == 1


def test_a_record_names_the_cpu_it_was_taken_on(tmp_path, monkeypatch):
    _workspace(tmp_path)
    read_cpuinfo = reproduction.this_machine
    monkeypatch.setattr(reproduction, "dvc_changed_stages", lambda root: set())
    monkeypatch.setattr(reproduction, "this_machine", lambda: "CPU A (avx2, fma)")
    result, _, _ = reproduction.record(tmp_path)
    assert {entry["machine"] for entry in result["stages"].values()} == {"CPU A (avx2, fma)"}
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 fma avx512f\n\n"
                       "processor\t: 1\nmodel name\t: Other\n")
    assert read_cpuinfo(cpuinfo) == "Some CPU (avx2, fma, avx512f)"


def test_a_clone_with_its_results_from_git_and_no_model_is_partly_here(tmp_path, capsys):
    """The model (DVC's cache) is absent and the metrics (git) are as recorded: nothing differs;
    the absent files are named and the check passes. A changed present file still differs."""
    recorded = _workspace(tmp_path)
    (tmp_path / "data/train/model.bin").unlink()
    result, files = _verdicts(tmp_path, recorded)["train"]
    assert (result, files) == ("partly here", ["1 files as recorded", "1 absent", "data/train/model.bin"])
    (tmp_path / DIGESTS).write_text(yaml.safe_dump(recorded))
    assert reproduction.main(["check", "--dir", str(tmp_path)]) == 0
    assert "1 partly here" in capsys.readouterr().out
    (tmp_path / "reports/metrics.json").write_text(json.dumps({"return": 11}))
    assert _verdicts(tmp_path, recorded)["train"] == ("differs", ["data/train/model.bin", "reports/metrics.json"])
