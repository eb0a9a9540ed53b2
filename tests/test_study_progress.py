"""The launcher's one line per finished trial (ser_tune.study.progress.TrialProgress)."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

from ser_tune.study.progress import TrialProgress


def _trial(value, **cfg):
    return SimpleNamespace(last_result={"val_bca": value, "time_total_s": 2.5, **{f"cfg_{k}": v for k, v in cfg.items()}})


def test_a_line_per_trial_with_the_best_so_far(capsys):
    progress = pickle.loads(pickle.dumps(TrialProgress("tpe", 3, "val_bca", "max")))   # Ray pickles callbacks
    progress.on_trial_complete(0, [], _trial(0.61, lr=0.000216, layer=2))
    progress.on_trial_complete(1, [], _trial(0.55, lr=0.001, layer="weighted"))
    progress.on_trial_error(2, [], SimpleNamespace(last_result={}))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "tpe      1/3  val_bca 0.610  best 0.610  2.5 s  lr=0.000216 layer=2"
    assert lines[1] == "tpe      2/3  val_bca 0.550  best 0.610  2.5 s  lr=0.001 layer=weighted"
    assert lines[2].startswith("tpe      3/3  ERROR")


def test_best_follows_the_mode(capsys):
    progress = TrialProgress("gp", 2, "loss", "min")
    progress.on_trial_complete(0, [], SimpleNamespace(last_result={"loss": 0.4}))
    progress.on_trial_complete(1, [], SimpleNamespace(last_result={"loss": 0.2}))
    assert capsys.readouterr().out.splitlines()[1].startswith("gp       2/2  loss 0.200  best 0.200")


def test_chosen_fields_instead_of_the_searched_settings(capsys):
    progress = TrialProgress("active", 4, "test_bca", "max", fields=("acquisition", "seed"))
    progress.on_trial_complete(0, [], SimpleNamespace(last_result={"test_bca": 0.9, "acquisition": "margin",
                                                                   "seed": 1, "cfg_lr": 0.1}))
    assert capsys.readouterr().out.strip() == "active   1/4  test_bca 0.900  best 0.900  acquisition=margin seed=1"


def test_a_resumed_unit_counts_on_from_the_trials_already_ended(capsys):
    # a restored experiment runs with the callback pickled before the interruption: its count is behind
    progress = pickle.loads(pickle.dumps(TrialProgress("tpe", 4, "val_bca", "max")))
    ended = [SimpleNamespace(status="TERMINATED", last_result={"val_bca": 0.7}),
             SimpleNamespace(status="ERROR", last_result={})]
    running = SimpleNamespace(status="RUNNING", last_result={"val_bca": 0.6, "time_total_s": 1.0})
    progress.on_trial_complete(0, [*ended, running], running)
    assert capsys.readouterr().out.startswith("tpe      3/4  trial 3  val_bca 0.600  best 0.700")


def test_the_line_names_the_trial_by_its_place_in_start_order(capsys):
    # the count is of trials ended; "trial N" is the start order the report's plots and tables use
    progress = TrialProgress("tpe", 3, "val_bca", "max")
    first, second, third = (_trial(v) for v in (0.5, 0.6, 0.4))
    progress.on_trial_complete(0, [first, second, third], third)
    progress.on_trial_complete(1, [first, second, third], first)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tpe      1/3  trial 3  val_bca 0.400")
    assert lines[1].startswith("tpe      2/3  trial 1  val_bca 0.500")
