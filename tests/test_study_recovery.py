"""Every interruption can be finished: a unit whose Ray state was lost starts again without re-running its ended
trials; a Ctrl-C that Ray Tune takes as its run's end still stops the study (Ctrl-C in the encode, mid-study and as a
unit ends, each resumed: tests/test_study_interrupt.py); a full or unwritable storage is one line and loses nothing."""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from ray.tune import Result
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.tune import _setup_signal_catching

from ser_tune.search import make_plan
from ser_tune.study import cli, local_ray, lost_state, session
from ser_tune.study.driver import StudyKind, Unit, fit
from ser_tune.study.folder import TRIALS_FILE, StudyFolder
from ser_tune.study.progress import TrialProgress
from test_launch import REPO, _config, _launch
from test_study_interrupt import _wait_for

SPACE = {"lr": {"loguniform": [1e-4, 1e-1]}, "num_epochs": {"int": [1, 5]}, "unfreeze": {"choice": ["none", "top:1"]}}


def _unit(strategy: str, budget: int = 5) -> Unit:
    plan = make_plan(strategy, SPACE, budget=budget, seed=0, grid={"lr": [1e-3, 1e-2], "num_epochs": [1, 2]})
    return Unit(name=strategy, trainable=None, context=None, param_space=plan.param_space,
                expected_trials=plan.expected_trials, searcher=plan.searcher, num_samples=plan.num_samples,
                metric="val_bca")


def _ended(configs_and_values) -> list[Result]:
    return [Result(metrics={"config": config, "val_bca": value, "trial_complete": True}, checkpoint=None,
                   error=None, path=f"/nowhere/{i}") for i, (config, value) in enumerate(configs_and_values)]


@pytest.mark.parametrize("strategy, told", [
    ("tpe", lambda s: len(s.searcher._hpopt_trials.trials)),
    ("gp", lambda s: len(s.searcher.optimizer.space)),   # its warm-up (2 of 5) filled: both in the GP
    ("skopt", lambda s: len(s.searcher._opt.Xi)),
])
def test_a_restarted_unit_runs_the_budget_left_with_its_searcher_told_the_ended_trials(strategy, told):
    unit = _unit(strategy)
    # the ended trials' configs as this searcher suggested them (raw: gp's are relaxed)
    probe = _unit(strategy).searcher
    probe.set_search_properties("val_bca", "max", unit.param_space)
    configs = []
    for i in range(2):
        configs.append(probe.suggest(f"t{i}"))
        probe.on_trial_complete(f"t{i}", {"val_bca": 0.5})
    earlier = _ended([(config, 0.5 + i / 10) for i, config in enumerate(configs)])
    again = lost_state.restart(unit, earlier)
    assert again.num_samples == 3 and told(again.searcher) == 2
    assert again.searcher.suggest("next") is not None   # and it goes on suggesting


@pytest.mark.parametrize("strategy", ["tpe", "gp", "skopt"])
def test_a_restarted_search_in_its_warm_up_does_not_draw_its_first_points_again(strategy):
    """A clean-clone run: a tpe unit restarted after a lost state ran the config of its one ended trial again
    (the same seed, the same random warm-up draws). The model-based searchers' warm-ups are random draws too."""
    probe = _unit(strategy, budget=15)   # a random warm-up of several trials
    probe.searcher.set_search_properties("val_bca", "max", probe.param_space)
    first = probe.searcher.suggest("t0")
    again = lost_state.restart(_unit(strategy, budget=15), _ended([(first, 0.5)]))
    assert again.searcher.suggest("next") != first


def _trials_generated(unit: Unit) -> list[dict]:
    """The configs Ray Tune's generator makes of ``unit`` (as Tuner.fit would ask for them, one ending at a time)."""
    unit.searcher.add_configurations({unit.name: {"run": lambda config: None, "config": unit.param_space,
                                                  "num_samples": unit.num_samples}})
    configs = []
    while not unit.searcher.is_finished() and len(configs) < 20:
        trial = unit.searcher.next_trial()   # (None while its trials are not yet made)
        if trial is not None:
            unit.searcher.on_trial_complete(trial.trial_id)
            configs.append(trial.config)
    return configs


def test_a_restarted_grid_runs_only_the_points_not_yet_run_keeping_its_constants():
    unit = _unit("grid", budget=10)   # the whole grid: 4 points, and a setting every trial has
    unit = dataclasses.replace(unit, param_space={**unit.param_space, "max_length": 3.0})
    earlier = _ended([({"lr": 1e-3, "num_epochs": 1, "max_length": 3.0}, 0.5),
                      ({"lr": 1e-2, "num_epochs": 2, "max_length": 3.0}, 0.6)])
    again = lost_state.restart(unit, earlier)
    assert isinstance(again.searcher, BasicVariantGenerator) and again.num_samples == 2
    configs = _trials_generated(again)   # (an emptied space made Ray's generator fail on the first point)
    assert sorted((c["lr"], c["num_epochs"], c["max_length"]) for c in configs) == [(1e-3, 2, 3.0), (1e-2, 1, 3.0)]


def test_a_restarted_grid_larger_than_its_budget_runs_its_first_points_not_yet_run():
    unit = _unit("grid", budget=3)   # the first 3 of 4 points
    first = [(p["lr"], p["num_epochs"]) for p in unit.searcher._points_to_evaluate]
    again = lost_state.restart(unit, _ended([({"lr": first[1][0], "num_epochs": first[1][1]}, 0.5)]))
    assert [(p["lr"], p["num_epochs"]) for p in again.searcher._points_to_evaluate] == [first[0], first[2]]


def test_a_restarted_unit_s_progress_lines_count_on_from_its_ended_trials(capsys):
    unit = dataclasses.replace(_unit("random"), progress=TrialProgress("random", 5, "val_bca", "max"))
    again = lost_state.restart(unit, _ended([({"lr": 1e-3, "num_epochs": 1}, 0.5), ({"lr": 1e-2, "num_epochs": 2}, 0.7)]))
    first = SimpleNamespace(status="TERMINATED", last_result={"val_bca": 0.6})   # the new run's first trial
    again.progress.on_trial_complete(0, [first], first)
    assert capsys.readouterr().out.split() == "random 3/5 trial 3 val_bca 0.600 best 0.700".split()
    assert unit.progress.done == 0   # the unit's own progress is not changed


def test_an_empty_experiment_state_is_lost_and_a_readable_one_is_not(tmp_path):
    trial = tmp_path / "run_trial_a_00000_0"
    trial.mkdir()
    (trial / "result.json").write_text(json.dumps({"config": {}, "trial_complete": True, "trial_id": "a_00000"}) + "\n")
    state = tmp_path / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text("")
    assert lost_state.state_lost(tmp_path) and lost_state.ended_trials(tmp_path) == [trial.name]
    state.write_text("{}")
    assert not lost_state.state_lost(tmp_path)
    assert not lost_state.state_lost(tmp_path / "never-started")


def _trial_folder(unit_dir: Path, name: str, value: float) -> Path:
    trial = unit_dir / name
    trial.mkdir(parents=True)
    (trial / "result.json").write_text(json.dumps({"config": {"lr": 1e-3, "num_epochs": 1}, "val_bca": value,
                                                   "trial_complete": True, "trial_id": name[-9:-2], "epoch": 1,
                                                   "timestamp": 2.0, "time_total_s": 0.5}) + "\n")
    return trial


def test_a_restored_run_that_ends_with_budget_left_and_no_signal_runs_the_rest(tmp_path, monkeypatch, capsys):
    """Ctrl-C as a unit started can leave its searcher's snapshot ahead of its trials: Ray Tune's restored
    run then ends, no signal, with trials of the budget never run (seen: random search, 1 of 3, every resume
    after it exiting 130). The unit goes on as after a lost state: the ended trial kept, 2 more run."""
    from ser_tune.study import driver

    folder = StudyFolder.create(tmp_path, "t")
    folder.meta = {"name": "t", "status": "running", "units": {"random": {"status": "interrupted",
                                                                          "started_at": 1.0, "paused_at": 2.0}}}
    folder.save_meta()
    unit_dir = folder.dir / "random"
    (unit_dir / "experiment_state-2026-01-01_00-00-00.json").parent.mkdir(parents=True)
    (unit_dir / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    ran = []

    def fit_unit(folder, unit, resources, verbose):
        ran.append(unit.num_samples)
        if len(ran) == 1:   # the restored run: one trial, then Ray Tune ends it
            return [lost_state.load(_trial_folder(unit_dir, "run_trial_a_00000_0", 0.5))], False
        return [lost_state.load(_trial_folder(unit_dir, f"run_trial_b_0000{i}_{i}", 0.6)) for i in range(2)], False

    monkeypatch.setattr(driver, "restorable", lambda path: True)
    monkeypatch.setattr(driver, "fit_unit", fit_unit)
    kind = StudyKind()
    unit = dataclasses.replace(_unit("random", budget=3), tags={"strategy": "random"})
    driver.run_unit(kind, folder, unit, resources={"cpu": 1})
    assert ran == [3, 2]
    said = capsys.readouterr().out   # one line says what happened (not also "could not be read")
    assert said.count("ended trials are kept") == 1 and "restored run ended" in said
    meta = json.loads((folder.dir / "study.json").read_text())["units"]["random"]
    assert meta["status"] == "done" and meta["trials_ended"] == 3 and meta["earlier_trials"] == ["run_trial_a_00000_0"]
    assert not list(unit_dir.glob("experiment_state-*.json"))   # the restored state is gone with the restart
    rows = pd.read_csv(folder.dir / TRIALS_FILE)
    assert len(rows) == 3 and (rows.status == "TERMINATED").all()


def test_a_searcher_snapshot_cut_short_is_a_lost_state_and_forgotten_with_it(tmp_path):
    """A kill while Ray wrote the searcher's snapshot (CI: "Failed to restore the run state", EOFError in
    ``_load_newest_checkpoint``, and the resumed unit stopped after one trial) is a lost state like an
    empty experiment state: the unit starts again with what its ended trials left."""
    import cloudpickle

    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (tmp_path / "search_gen_state-2026-01-01_00-00-00.json").write_text("{}")
    older, newest = (tmp_path / f"searcher-state-2026-01-01_00-00-0{i}.pkl" for i in (0, 1))
    older.write_bytes(cloudpickle.dumps({"trials": 1}))
    newest.write_bytes(cloudpickle.dumps({"trials": 2}))
    assert not lost_state.state_lost(tmp_path)
    newest.write_bytes(newest.read_bytes()[:5])   # cut short: Ray reads only the newest
    assert lost_state.state_lost(tmp_path)
    newest.write_bytes(b"")
    assert lost_state.state_lost(tmp_path)
    (tmp_path / "tuner.pkl").write_bytes(b"x")
    for trial in ("run_trial_a_1", "run_trial_b_2"):   # a ended, b cut off by the kill
        (tmp_path / trial).mkdir()
        (tmp_path / trial / "params.json").write_text("{}")
    lost_state.forget_state(tmp_path, keep=["run_trial_a_1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_trial_a_1"]


def test_ray_s_failed_snapshots_on_a_full_disk_are_one_line_said_once():
    session.quiet_transient_sync_errors()
    log, seen = logging.getLogger("ray.tune.execution.experiment_state"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(logging.Formatter().format(record))
    log.addHandler(handler)
    try:
        for _ in range(3):
            try:
                raise OSError(errno.ENOSPC, "No space left on device", "/s/t-1/tpe/experiment_state-x.json")
            except OSError:
                log.error("Saving experiment state to storage failed with exception: ", exc_info=True)
    finally:
        log.removeHandler(handler)
    assert seen == ["experiment snapshot: cannot write /s/t-1/tpe/experiment_state-x.json: No space left on device"]


class _FakeTuner:
    """Fits the way Ray Tune does as far as signals go: its own SIGINT handler for the run."""

    def __init__(self, signal_at_the_end: bool):
        self.signal_at_the_end = signal_at_the_end

    def fit(self):
        _setup_signal_catching()
        if self.signal_at_the_end:   # a Ctrl-C as the last trials end: Ray's handler takes it
            signal.raise_signal(signal.SIGINT)
        return "grid"


def test_a_ctrl_c_that_ray_tune_takes_as_its_run_ends_still_stops_the_study():
    before = signal.getsignal(signal.SIGINT)
    assert fit(_FakeTuner(signal_at_the_end=True)) == ("grid", True)
    assert fit(_FakeTuner(signal_at_the_end=False)) == ("grid", False)
    # Ray's handler does not outlive the run, where it would swallow the next Ctrl-C (between units)
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


class _WritesTrials(StudyKind):
    def units(self, folder, cluster):
        return []

    def finish(self, folder):
        folder.replace_rows(TRIALS_FILE, pd.DataFrame([{"unit": "u", "trial_id": "new"}]), "u")


def test_a_full_disk_is_one_line_the_study_interrupted_and_nothing_written_lost(tmp_path, monkeypatch):
    folder = StudyFolder.create(tmp_path, "t")
    folder.meta = {"name": "t", "status": "running"}
    folder.save_meta()
    (folder.dir / TRIALS_FILE).write_text("unit,trial_id\nold,1\n")
    real_write = pathlib.Path.write_text

    def full(path, text, *args, **kwargs):
        if path.name.startswith(TRIALS_FILE):   # half of it written, then no space left
            real_write(path, text[:len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    line = cli.run_until_interrupted(_WritesTrials(), folder, None, SimpleNamespace(cpus_per_trial=1, memory_gb=None),
                                     0, fail_before_trials=pytest.fail)
    assert line == f"cannot write {folder.dir / TRIALS_FILE}.tmp: No space left on device"
    assert (folder.dir / TRIALS_FILE).read_text() == "unit,trial_id\nold,1\n"
    assert not list(folder.dir.glob("*.tmp"))
    assert json.loads((folder.dir / "study.json").read_text())["status"] == "interrupted"


def _finished(tmp_path: Path, unit: str) -> list[Path]:
    return [p for p in (tmp_path / "studies").glob(f"t-*/{unit}/*/result.json") if '"trial_complete": true' in p.read_text()]


def _alive(noted: list) -> list:
    return [pid for pid, start in noted if start is not None and local_ray.started(pid) == start]


@pytest.mark.slow
def test_a_killed_launcher_with_its_ray_state_emptied_resumes_without_rerunning_and_leaves_no_ray(tmp_path):
    # one strategy: the kill comes in its run (a unit not begun would start afresh, as any: test_launch)
    cfg = _config(tmp_path, strategies=["tpe"], budget={"trials": 4},
                  space={"lr": {"loguniform": [1e-3, 3e-2]}, "num_epochs": {"int": [6, 8]}})
    proc = subprocess.Popen([sys.executable, "-m", "ser_tune.launch", str(cfg), "--concurrency", "1"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    records = tmp_path / "studies" / local_ray.RECORDS
    try:
        _wait_for(lambda: len(_finished(tmp_path, "tpe")) >= 2, "two finished tpe trials")
        noted = json.loads((records / f"{proc.pid}.json").read_text())
    finally:
        proc.kill()   # the launcher alone: what its Ray leaves running is the next start's to end
        proc.wait(timeout=60)
    study = next((tmp_path / "studies").glob("t-*"))
    ended_before = {p.parent.name: p.read_text() for p in _finished(tmp_path, "tpe")}
    assert _alive(noted[1:]), "the killed launcher's Ray left nothing running (nothing for the resume to end)"
    for state in (study / "tpe").glob("experiment_state-*.json"):
        state.write_text("")   # Ray was writing it in place when the kill came
    try:
        run = _launch(cfg, "--resume", study, "--json")
    finally:
        for pid in _alive(noted[1:]):   # never leave a Ray behind, whatever the outcome
            os.kill(pid, signal.SIGKILL)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "tpe: Ray's state of this unit could not be read" in run.stderr
    assert "Traceback" not in run.stderr and "Failed to restore" not in run.stderr
    assert _alive(noted[1:]) == [] and not list(records.glob("*.json"))
    trials = pd.read_csv(study / "trials.csv", dtype={"trial_id": str})
    rows = trials[trials.unit == "tpe"]
    assert len(rows) == 4 and rows.trial_id.is_unique and (rows.status == "TERMINATED").all(), rows.to_string()
    assert rows.trial_index.is_unique
    # the trials that had ended were neither run again nor dropped
    tpe_ids = set(trials[trials.unit == "tpe"].trial_id)
    for name, text in ended_before.items():
        assert (study / "tpe" / name / "result.json").read_text() == text
        assert json.loads(text.splitlines()[-1])["trial_id"] in tpe_ids
    assert len(_finished(tmp_path, "tpe")) == 4


def test_storage_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    storage = tmp_path / "read-only"
    storage.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(storage)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        run = _launch(_config(tmp_path, storage=str(storage)), timeout=180)
    finally:
        subprocess.run(["umount", str(storage)], check=True)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {storage}/t-"), run.stderr[-2000:]
    assert errors[0].endswith(": Read-only file system")


def test_a_trial_s_reports_survive_a_result_line_cut_off_by_a_kill(tmp_path):
    """Ray reads result.json whole and gives no rows when one line is cut off (the driver killed while it
    wrote the final row): the trial's complete rows are still its reports."""
    from ser_tune.study.driver import trial_reports

    rows = [{"round": r, "test_bca": 0.5 + r / 10, "timestamp": 100 + r} for r in (1, 2, 3)]
    (tmp_path / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"round": 3, "do')
    result = SimpleNamespace(metrics={"round": 3, "test_bca": 0.8}, path=str(tmp_path),
                             metrics_dataframe=pd.DataFrame())
    assert trial_reports(result) == rows
    # nothing reported: nothing read
    assert trial_reports(SimpleNamespace(metrics={}, path=str(tmp_path), metrics_dataframe=None)) == []
