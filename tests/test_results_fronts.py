"""A study's Pareto fronts from a hand-made study folder: per strategy, hypervolume over wall-clock, the
constrained best trial, the exported front and ``predict --max-latency``.

The folder: two strategies, two runs each (units "<strategy>-r0/-r1", each started at 1000 s), the
constraint ``latency_ms_per_s <= 50``; trial X (random-r0) is the most accurate of all but breaks it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ser_tune import predict
from ser_tune.results import fronts, load_study, summary_json, write_report
from ser_tune.objectives import hypervolume
from ser_tune.strategies import export_best, export_front

OBJECTIVES = {"val_bca": "max", "latency_ms_per_s": "min"}
# unit, trial_id, index, status, val_bca, latency, layer, test_bca, finished_at
ROWS = [
    ("random-r0", "X", 0, "TERMINATED", 0.95, 80.0, "weighted", 0.90, 1010.0),   # infeasible (> 50 ms/s)
    ("random-r0", "A", 1, "TERMINATED", 0.80, 40.0, 4, 0.78, 1020.0),
    ("random-r0", "B", 2, "TERMINATED", 0.70, 20.0, 2, 0.66, 1030.0),
    ("random-r0", "C", 3, "TERMINATED", 0.60, 30.0, 3, 0.61, 1040.0),              # dominated by B
    ("random-r1", "D", 0, "TERMINATED", 0.65, 15.0, 4, 0.70, 1015.0),
    ("random-r1", "E", 1, "ERROR", math.nan, math.nan, 1, math.nan, 1016.0),
    ("nsga2-r0", "F", 0, "TERMINATED", 0.85, 50.0, 5, 0.83, 1005.0),
    ("nsga2-r0", "G", 1, "TERMINATED", 0.65, 10.0, 1, 0.60, 1025.0),
    ("nsga2-r1", "H", 0, "TERMINATED", 0.82, 35.0, 3, 0.79, 1012.0),
]


def make_front_study(root: Path) -> Path:
    study = root / "mo"
    study.mkdir(parents=True)
    units = {unit: {"status": "done", "started_at": 1000.0, "finished_at": 1050.0, "budget": 4,
                    "tags": {"strategy": unit.split("-")[0], "repeat": int(unit[-1]), "outer_fold": 0}}
             for unit in dict.fromkeys(r[0] for r in ROWS)}
    meta = {"name": "mo", "started_at": 990.0, "finished_at": 1050.0, "labels": ["a", "b"], "units": units,
            "experiment": {"objective": {"metric": "val_bca", "mode": "max", "metrics": OBJECTIVES,
                                         "constraints": ["latency_ms_per_s <= 50"],
                                         "latency": {"clips": 4, "repeats": 5, "warmup": 1}},
                           "budget": {"trials": 4, "repeats": 2}}}
    (study / "study.json").write_text(json.dumps(meta))
    rows = []
    for unit, trial_id, index, status, val, latency, layer, test, end in ROWS:
        model = study / "_trial_state" / unit / trial_id / "model"
        model.mkdir(parents=True)
        (model / "model.json").write_text(json.dumps({"trial": trial_id}))
        rows.append({"unit": unit, "strategy": unit.split("-")[0], "trial_id": trial_id, "trial_index": index,
                     "status": status, "val_bca": val, "test_bca": test, "latency_ms_per_s": latency,
                     "latency_cv": 0.05, "latency_iqr_ms_per_s": 1.0, "latency_audio_seconds": 8.0,
                     "model_bytes": 1e6 * (1 + index), "cfg_layer": layer, "started_at": end - 5.0,
                     "finished_at": end, "model_dir": str(model), "feasible": latency <= 50})
    pd.DataFrame(rows).to_csv(study / "trials.csv", index=False)
    return study


@pytest.fixture
def study(tmp_path):
    return load_study(make_front_study(tmp_path))


def ids(frame: pd.DataFrame) -> list[str]:
    return list(frame["trial_id"])


def test_each_strategy_front_is_its_feasible_non_dominated_set(study):
    assert study.front_objectives == OBJECTIVES
    assert ids(study.feasible_trials("random")) == ["A", "B", "C", "D"]   # X breaks the constraint, E failed
    assert ids(study.front_trials("random")) == ["A", "B", "D"]          # most accurate first
    assert ids(study.front_trials("nsga2")) == ["F", "H", "G"]
    assert ids(study.front_trials()) == ["F", "H", "B", "G"]              # the study's: H beats A, G beats D


def test_hypervolume_per_run_against_one_reference_and_over_time(study):
    reference = fronts.study_reference(study)
    assert reference == {"val_bca": 0.6, "latency_ms_per_s": 50.0}             # worst feasible values
    # random-r0: A (0.8, 40) and B (0.7, 20): 0.1 x 30 + 0.1 x 10 (C adds nothing: it is the reference's
    # BCA); random-r1: D (0.65, 15): 0.05 x 35
    assert fronts.final_hypervolumes(study, "random", reference) == pytest.approx([4.0, 1.75])
    curves = fronts.hypervolume_curves(study, "random", reference)
    assert list(curves[0].index) == [0.0, 20.0, 30.0, 40.0]   # X (10 s) is infeasible: not counted
    assert curves[0].tolist() == pytest.approx([0.0, 2.0, 4.0, 4.0])   # A alone: 0.2 x 10
    band = fronts.hypervolume_band(study, "random", reference, points=5)   # grid 0, 10, 20, 30, 40 s
    assert band["runs"].tolist() == [2, 2, 2, 2, 2]   # nothing ended yet is a hypervolume of 0, not a gap
    assert band["mean"].tolist() == pytest.approx([0.0, 0.0, (2.0 + 1.75) / 2, (4.0 + 1.75) / 2, (4.0 + 1.75) / 2])


def test_the_best_trial_meets_the_constraints_when_one_does(study):
    assert study.best_trial("random")["trial_id"] == "A"     # X is more accurate but infeasible
    assert study.best_trial()["trial_id"] == "F"
    assert study.best_trial(unit="random-r1")["trial_id"] == "D"   # E failed


def test_an_interrupted_trial_is_never_the_best_for_the_report_or_the_export(tmp_path):
    folder = make_front_study(tmp_path)
    trials = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
    cut_off = trials[trials["trial_id"] == "A"].assign(trial_id="R", trial_index=4, status="RUNNING", val_bca=0.99)
    pd.concat([trials, cut_off]).to_csv(folder / "trials.csv", index=False)   # feasible and the most accurate
    study = load_study(folder)
    assert study.best_trial("random")["trial_id"] == "A" and study.best_trial()["trial_id"] == "F"
    assert summary_json([study])["studies"][0]["strategies"]["random"]["best_trial_id"] == "A"
    export_best(study)
    assert study.meta["best_model"]["trial_id"] == "F"
    assert json.loads((folder / "best_model" / "model.json").read_text())["trial"] == "F"


def test_json_carries_each_strategy_front_and_hypervolume(study):
    entry = summary_json([study])["studies"][0]["strategies"]
    random_front = entry["random"]["pareto"]
    assert [p["trial_id"] for p in random_front] == ["A", "B", "D"]
    assert random_front[0] == {"trial_id": "A", "config": {"layer": 4}, "val_bca": 0.8, "latency_ms_per_s": 40.0,
                               "latency_iqr_ms_per_s": 1.0, "latency_cv": 0.05, "test_bca": 0.78,
                               "model_bytes": 2e6}
    assert entry["random"]["hypervolume"]["runs"] == pytest.approx([4.0, 1.75])
    assert entry["random"]["hypervolume"]["se"] == pytest.approx(np.std([4.0, 1.75], ddof=1) / math.sqrt(2))
    assert entry["random"]["best_trial_id"] == "A"


def test_the_report_shows_fronts_latency_spread_and_plots(study):
    report = write_report(study.dir).read_text()
    section = report.split("## Deployment: val_bca against latency_ms_per_s")[1].split("\n## ")[0]
    assert "coefficient of variation of 5.0%" in section and "8.0 s of audio" in section
    assert "| random | A | layer=4 | 0.800 | 40 | 2.00 | 0.780 |" in section
    assert "`latency_ms_per_s <= 50`" in section
    assert (study.dir / "plots" / "fronts.png").is_file() and (study.dir / "plots" / "hypervolume_vs_time.png").is_file()


def test_the_study_front_is_exported_and_predict_picks_by_latency(study, capsys):
    folder = export_front(study)
    listing = json.loads((folder / "front.json").read_text())
    assert [m["trial_id"] for m in listing["models"]] == ["F", "H", "B", "G"]
    assert all((folder / m["path"] / "model.json").is_file() for m in listing["models"])
    assert predict.choose_front_model(study.dir, 40.0)[1]["trial_id"] == "H"    # 0.82 at 35 ms/s
    assert predict.choose_front_model(folder, 50.0)[1]["trial_id"] == "F"
    assert predict.choose_front_model(folder, 12.0)[0] == folder / "G"
    with pytest.raises(ValueError, match=r"no front model within 5 ms per second of audio; the fastest, trial G, "
                                         r"takes 10\.0 ms/s \(latency_ms_per_s\)"):
        predict.choose_front_model(folder, 5.0)
    assert predict.main([str(study.dir), "--max-latency", "5", "clip.wav"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_a_study_without_several_objectives_or_latency_has_no_front(tmp_path):
    study_dir = make_front_study(tmp_path)
    meta = json.loads((study_dir / "study.json").read_text())
    meta["experiment"]["objective"] = {"metric": "val_bca", "mode": "max"}
    (study_dir / "study.json").write_text(json.dumps(meta))
    trials = pd.read_csv(study_dir / "trials.csv").drop(columns=["latency_ms_per_s"])
    trials.to_csv(study_dir / "trials.csv", index=False)
    study = load_study(study_dir)
    assert study.front_objectives == {} and export_front(study) is None
    assert "pareto" not in summary_json([study])["studies"][0]["strategies"]["random"]
    with pytest.raises(ValueError, match="--max-latency needs a study's exported front"):
        predict.choose_front_model(study_dir, 10.0)


def test_hypervolume_of_the_study_front_is_the_union_of_the_strategies(study):
    reference = fronts.study_reference(study)
    union = hypervolume(study.feasible_trials(), OBJECTIVES, reference)
    per_strategy = [hypervolume(study.feasible_trials(s), OBJECTIVES, reference) for s in study.strategies]
    assert union >= max(per_strategy)
