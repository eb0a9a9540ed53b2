"""Every number of the comparison, checked against the hand-made trials (see test_results_study)."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from ser_tune.results import compare, load_study, summary_json
from ser_tune.results.timing import cumulative_trial_seconds, peak_concurrency
from test_results_study import make_study


@pytest.fixture
def tables(tmp_path):
    return compare([make_study(tmp_path)])


def _row(frame: pd.DataFrame, strategy: str, threshold: float | None = None) -> dict:
    rows = frame[frame["strategy"] == strategy]
    if threshold is not None:
        rows = rows[rows["threshold"] == threshold]
    assert len(rows) == 1
    return rows.iloc[0].to_dict()


def test_strategy_table_counts_best_and_test(tables):
    strategies = tables["strategies"]
    assert list(strategies["strategy"]) == ["random", "tpe"]
    random = _row(strategies, "random")
    # The ERROR trial's 0.95 is not a usable model: best is trial 00001 (0.85), its test 0.80.
    assert (random["trials"], random["errors"], random["trials_started"]) == (3, 1, 4)
    assert random["best_val"] == pytest.approx(0.85)
    assert random["best_trial_id"] == "00001"
    assert random["best_config"] == {"lr": pytest.approx(3e-4), "num_epochs": 3}
    assert isinstance(random["best_config"]["num_epochs"], int)
    assert random["best_test"] == pytest.approx(0.80)
    tpe = _row(strategies, "tpe")
    assert (tpe["trials"], tpe["errors"]) == (2, 0)
    assert tpe["best_val"] == pytest.approx(0.93)
    assert tpe["best_config"] == {"lr": pytest.approx(4e-4), "num_epochs": 2}
    assert tpe["best_test"] == pytest.approx(0.90)


def test_strategy_table_time_accounting(tables):
    random = _row(tables["strategies"], "random")
    assert random["wall_clock_seconds"] == pytest.approx(300.0)           # 1400 - 1100
    assert random["per_minute"] == pytest.approx(0.85 / 5.0)
    assert random["trial_seconds"] == pytest.approx(100 + 140 + 35 + 95)
    assert random["load_seconds"] == pytest.approx(10 + 20 + 5 + 10)
    assert random["trial_encode_seconds"] == pytest.approx(4 + 6 + 2 + 3)
    assert random["train_seconds"] == pytest.approx(80 + 110 + 20 + 80)
    assert random["concurrency"] == 3                                      # 00001, 00002, 00003 at t=1225
    assert random["overhead_seconds"] == pytest.approx(300 - 370 / 3)
    tpe = _row(tables["strategies"], "tpe")
    assert tpe["wall_clock_seconds"] == pytest.approx(200.0)
    assert tpe["per_minute"] == pytest.approx(0.93 / (200 / 60))
    assert tpe["concurrency"] == 1
    assert tpe["overhead_seconds"] == pytest.approx(200 - 170)


def test_threshold_reached_with_concurrent_trials(tables):
    row = _row(tables["thresholds"], "random", 0.8)
    # First report >= 0.8 in time order: trial 00001 epoch 2 at t* = 1230.
    assert row["reached"]
    assert (row["crossing_trial_id"], row["crossing_epoch"]) == ("00001", 2)
    assert row["seconds_to"] == pytest.approx(130.0)                      # 1230 - 1100
    assert row["seconds_to_incl_encode"] == pytest.approx(180.0)          # + shared encode 50
    assert row["trials_to"] == 2
    # At t*: 00000 ttl 100 - load 10; 00001 ttl 110 - load 20; 00002 no report yet, 15 s elapsed
    # minus load 5; 00003 started 5 s before t* and still loading (load 10): 0.
    assert row["trial_seconds_to"] == pytest.approx(90 + 90 + 10 + 0)


def test_error_trial_never_reaches_and_threshold_is_censored(tables):
    row = _row(tables["thresholds"], "random", 0.9)
    assert not row["reached"]                       # only the ERROR trial reported 0.95
    for column in ("seconds_to", "seconds_to_incl_encode", "trial_seconds_to", "trials_to",
                   "crossing_value"):
        assert math.isnan(row[column])
    assert pd.isna(row["crossing_trial_id"])
    assert row["trials_started"] == 4 and row["wall_clock_seconds"] == pytest.approx(300.0)


def test_sequential_strategy_thresholds(tables):
    low = _row(tables["thresholds"], "tpe", 0.8)
    assert (low["seconds_to"], low["trial_seconds_to"], low["trials_to"]) == pytest.approx((40, 30, 1))
    high = _row(tables["thresholds"], "tpe", 0.9)
    assert high["seconds_to"] == pytest.approx(130.0)
    assert high["seconds_to_incl_encode"] == pytest.approx(180.0)
    assert high["trial_seconds_to"] == pytest.approx((80 - 10) + (40 - 10))
    assert high["trials_to"] == 2


def test_explicit_thresholds_override_the_study(tmp_path):
    tables = compare([make_study(tmp_path)], thresholds=[0.7, 0.99])
    assert sorted(set(tables["thresholds"]["threshold"])) == [0.7, 0.99]
    row = _row(tables["thresholds"], "random", 0.7)
    # 0.75 at t=1180 (00001 epoch 1): 00000 at 1150 has ttl 50 - 10, 00001 60 - 20.
    assert row["seconds_to"] == pytest.approx(80.0)
    assert row["trial_seconds_to"] == pytest.approx(40 + 40)
    assert not tables["thresholds"][tables["thresholds"]["threshold"] == 0.99]["reached"].any()


def test_running_strategy_ends_at_its_last_event(tmp_path):
    tables = compare([make_study(tmp_path, tpe_running=True)])
    tpe = _row(tables["strategies"], "tpe")
    assert tpe["status"] == "running"
    assert tpe["wall_clock_seconds"] == pytest.approx(1580 - 1400)


def test_a_run_still_going_counts_in_no_ert(tmp_path):
    # a study read while it runs (or after an interrupt): the unfinished run has not spent its budget
    from ser_tune.results.ert import run_reports, run_tables

    study = load_study(make_study(tmp_path, tpe_running=True))
    streams, _ = run_reports(study)
    assert set(streams) == {("random", "random")}
    assert list(run_tables(study, [0.8])[0.8]["strategy"]) == ["random"]


def test_cumulative_rule_without_time_total_uses_the_clock():
    trials = pd.DataFrame({"trial_id": ["a", "b"], "started_at": [0.0, 10.0],
                           "load_seconds": [2.0, float("nan")]})
    epochs = pd.DataFrame({"trial_id": ["a", "a"], "timestamp": [20.0, 40.0],
                           "time_total_s": [float("nan"), 40.0]})
    # a: last report <= 30 is at 20 with no Ray time: 20 - 0 - load 2; b: 30 - 10, no load known.
    assert cumulative_trial_seconds(trials, epochs, 30.0) == pytest.approx(18 + 20)


def test_peak_concurrency_ignores_touching_intervals():
    assert peak_concurrency([0, 10, 20], [10, 20, 30]) == 1
    assert peak_concurrency([0, 5, 6], [10, 8, 30]) == 3
    assert peak_concurrency([], []) == 1


def test_summary_json_layout_and_censored_nulls(tmp_path):
    folder = make_study(tmp_path)
    summary = summary_json([folder])
    (study,) = summary["studies"]
    assert study["study_dir"] == str(folder) and study["name"] == "fake"
    random = study["strategies"]["random"]
    assert random["trials"] == 3 and random["errors"] == 1
    assert random["best_val_bca"] == pytest.approx(0.85) and random["test_bca"] == pytest.approx(0.80)
    assert random["best_config"] == {"lr": pytest.approx(3e-4), "num_epochs": 3}
    assert random["seconds_to"] == {"0.8": pytest.approx(130.0), "0.9": None}
    assert random["trial_seconds_to"] == {"0.8": pytest.approx(190.0), "0.9": None}
    assert random["trials_to"] == {"0.8": 2, "0.9": None}
    assert random["wall_clock_seconds"] == pytest.approx(300.0)
    assert random["bca_per_minute"] == pytest.approx(0.17)
    tpe = study["strategies"]["tpe"]
    assert tpe["trials_to"] == {"0.8": 1, "0.9": 2}
    assert tpe["seconds_to"] == {"0.8": pytest.approx(40.0), "0.9": pytest.approx(130.0)}


def test_summary_json_uses_the_metric_name(tmp_path):
    summary = summary_json([make_study(tmp_path, metric="val_ccc")])
    tpe = summary["studies"][0]["strategies"]["tpe"]
    assert tpe["best_val_ccc"] == pytest.approx(0.93) and tpe["test_ccc"] == pytest.approx(0.90)
    assert "best_val_bca" not in tpe and "test_bca" not in tpe
    assert tpe["ccc_per_minute"] == pytest.approx(0.93 / (200 / 60))


def test_compare_two_studies_has_a_row_per_study_and_strategy(tmp_path):
    first = make_study(tmp_path, "first")
    second = make_study(tmp_path, "second", tpe_running=True)
    tables = compare([first, load_study(second)])
    assert list(zip(tables["strategies"]["study"], tables["strategies"]["strategy"])) == [
        ("first", "random"), ("first", "tpe"), ("second", "random"), ("second", "tpe")]
    assert len(tables["thresholds"]) == 8


def test_strategy_without_trials_is_all_censored(tmp_path):
    folder = make_study(tmp_path)
    meta = json.loads((folder / "study.json").read_text())
    meta["strategies"]["bohb"] = {"started_at": 1600.0, "finished_at": None, "status": "interrupted"}
    (folder / "study.json").write_text(json.dumps(meta))
    bohb = summary_json([folder])["studies"][0]["strategies"]["bohb"]
    assert (bohb["trials"], bohb["errors"], bohb["status"]) == (0, 0, "interrupted")
    assert bohb["best_val_bca"] is None and bohb["best_config"] == {} and bohb["test_bca"] is None
    assert bohb["seconds_to"] == {"0.8": None, "0.9": None}
    assert bohb["wall_clock_seconds"] is None


def test_a_resumed_run_leaves_the_time_its_study_was_stopped_out_of_its_clock(tmp_path):
    """tpe was interrupted in its second trial and resumed 2 s later (study.json's unit ``pauses``): its
    time to 0.9 and its wall-clock count the run, not the stop; a pause before the run counts for nothing."""
    study = make_study(tmp_path)
    meta = json.loads((study / "study.json").read_text())
    meta["strategies"]["tpe"]["pauses"] = [[1500.0, 1502.0], [1000.0, 1200.0]]   # in trial 00001
    (study / "study.json").write_text(json.dumps(meta))
    tables = compare([study])
    row = _row(tables["thresholds"], "tpe", 0.9)
    assert row["seconds_to"] == pytest.approx(1530 - 1400 - 2)     # 00001's first epoch, less the pause
    assert _row(tables["strategies"], "tpe")["wall_clock_seconds"] == pytest.approx(200.0 - 2)
    from ser_tune.results.timing import run_reports

    frame, totals = run_reports(load_study(study), "tpe")
    assert list(frame["time"]) == pytest.approx([40, 80, 128, 178])
    assert totals["seconds"] == pytest.approx(198) and totals["cpu_seconds"] == pytest.approx(80 + 90 - 2)
    assert list(frame["cpu_seconds"]) == pytest.approx([40, 80, 80 + 38, 80 + 88])


def test_the_driver_notes_a_stop_as_a_pause_of_the_unit_it_cut(tmp_path):
    import time

    from ser_tune.study.driver import note_pause

    interrupted = {"started_at": 100.0, "status": "interrupted", "paused_at": 160.0}
    note_pause(interrupted, tmp_path)
    assert "paused_at" not in interrupted and interrupted["pauses"][0][0] == 160.0
    assert interrupted["pauses"][0][1] == pytest.approx(time.time(), abs=5)
    killed = {"started_at": 100.0, "status": "running"}       # SIGKILL: Ray Tune's last snapshot of the unit
    state = tmp_path / "experiment_state-x.json"
    state.write_text("{}")
    note_pause(killed, tmp_path)
    assert killed["pauses"][0][0] == pytest.approx(state.stat().st_mtime)
    fresh = {"status": "running"}                              # never started: nothing to leave out
    note_pause(fresh, tmp_path)
    assert "pauses" not in fresh
