"""A hand-made study folder (every number checkable by hand) and the checks of load_study.

``make_study`` is imported by the other test_results_* files.

The fake study (unix times; all strategies share trial ids "00000"... as Ray's do per experiment):
  study started 1000, shared encode 50 s, thresholds 0.8 and 0.9, labels anger/happiness/neutral.
  random (started 1100, finished 1400), four trials, three running at once around t=1225:
    00000 idx0 1100-1200 load 10 ttl 100  reports 1150 (ttl 50) 0.60, 1200 (ttl 100) 0.70
    00001 idx1 1120-1260 load 20 ttl 140  reports 1180 (60) 0.75, 1230 (110) 0.85, 1260 (140) 0.82
    00002 idx2 1215-1250 load 5  ttl 35   ERROR; report 1240 (25) 0.95 (never counts as reached)
    00003 idx3 1225-1320 load 10 ttl 95   report 1300 (75) 0.50
  tpe (started 1400, finished 1600), sequential:
    00000 idx0 1400-1480 load 10 ttl 80   reports 1440 (40) 0.82, 1480 (80) 0.88
    00001 idx1 1490-1580 load 10 ttl 90   reports 1530 (40) 0.91, 1580 (90) 0.93  <- best overall
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ser_tune.results import StudyFormatError, load_study

LABELS = ["anger", "happiness", "neutral"]
BEST_CONFUSION = [[5, 1, 0], [0, 4, 2], [1, 0, 6]]
NAN = math.nan

# strategy, trial_id, idx, status, error, lr, epochs, val, best_epoch, test, acc, ttl, load, enc, train, start, end
TRIALS = [
    ("random", "00000", 0, "TERMINATED", "", 1e-4, 2, 0.70, 2, 0.65, 0.66, 100, 10, 4, 80, 1100, 1200),
    ("random", "00001", 1, "TERMINATED", "", 3e-4, 3, 0.85, 2, 0.80, 0.81, 140, 20, 6, 110, 1120, 1260),
    ("random", "00002", 2, "ERROR", "RuntimeError: boom", 1e-3, 4, 0.95, 1, NAN, NAN, 35, 5, 2, 20, 1215, 1250),
    ("random", "00003", 3, "TERMINATED", "", 5e-5, 2, 0.50, 1, 0.45, 0.47, 95, 10, 3, 80, 1225, 1320),
    ("tpe", "00000", 0, "TERMINATED", "", 2e-4, 2, 0.88, 2, 0.84, 0.85, 80, 10, 4, 60, 1400, 1480),
    ("tpe", "00001", 1, "TERMINATED", "", 4e-4, 2, 0.93, 2, 0.90, 0.91, 90, 10, 4, 70, 1490, 1580),
]
# strategy, trial_id, epoch, val, train_loss, timestamp, time_total_s
EPOCHS = [
    ("random", "00000", 1, 0.60, 1.2, 1150, 50), ("random", "00000", 2, 0.70, 1.0, 1200, 100),
    ("random", "00001", 1, 0.75, 1.1, 1180, 60), ("random", "00001", 2, 0.85, 0.9, 1230, 110),
    ("random", "00001", 3, 0.82, 0.8, 1260, 140),
    ("random", "00002", 1, 0.95, 0.7, 1240, 25),
    ("random", "00003", 1, 0.50, 1.3, 1300, 75),
    ("tpe", "00000", 1, 0.82, 1.0, 1440, 40), ("tpe", "00000", 2, 0.88, 0.9, 1480, 80),
    ("tpe", "00001", 1, 0.91, 0.8, 1530, 40), ("tpe", "00001", 2, 0.93, 0.7, 1580, 90),
]


def make_study(root: Path, name: str = "fake", *, synthetic: bool = False,
               speaker_dependent: bool = False, metric: str = "val_bca",
               thresholds: list | None = (0.8, 0.9), confusion: bool = True,
               epochs: bool = True, tpe_running: bool = False) -> Path:
    """Write the study folder described in the module docstring under root/name."""
    study = Path(root) / name
    study.mkdir(parents=True)
    test = "test_" + metric[4:]
    strategies = {
        "random": {"started_at": 1100.0, "finished_at": 1400.0, "budget": 4, "warmup": 4,
                   "notes": "random search, all 4 trials random", "status": "done"},
        "tpe": {"started_at": 1400.0, "finished_at": None if tpe_running else 1600.0, "budget": 3,
                "warmup": 1, "notes": "TPE (hyperopt), 1 random warm-up trial of 3",
                "status": "running" if tpe_running else "done"},
    }
    experiment = {"objective": {"metric": metric, "mode": "max"},
                  "budget": {"trials": 4, "minutes": None}, "resources": {"cpus_per_trial": 1}}
    if thresholds is not None:
        experiment["thresholds"] = list(thresholds)
    meta = {
        "name": name, "started_at": 1000.0, "finished_at": 1600.0, "experiment": experiment,
        "corpus": {"name": "emodb", "root": "/data/emodb", "files": 60, "speakers": 6,
                   "synthetic": synthetic, "labels": {"anger": 20, "happiness": 20, "neutral": 20}},
        "split": {"kind": "random" if speaker_dependent else "speaker",
                  "speaker_dependent": speaker_dependent, "train_speakers": ["03", "08", "09", "10"],
                  "val_speakers": ["11"], "test_speakers": ["12"],
                  "counts": {"train": 40, "val": 10, "test": 10}},
        "encoder": {"spec": "whisper-base", "family": "whisper", "num_layers": 6, "hidden_size": 512},
        "machine": {"hostname": "testhost", "cpus": 2, "platform": "Linux", "python": "3.11",
                    "torch": "2.14.1", "ray": "2.60.0", "nodes": 1},
        "encode_seconds": 50.0, "labels": LABELS, "strategies": strategies,
    }
    (study / "study.json").write_text(json.dumps(meta))
    rows = []
    for (strategy, tid, idx, status, error, lr, n_epochs, val, best_epoch, test_value, acc,
         ttl, load, enc, train, start, end) in TRIALS:
        row = {"strategy": strategy, "trial_id": tid, "trial_index": idx, "status": status,
               "error": error, "cfg_lr": lr, "cfg_num_epochs": n_epochs, metric: val,
               "best_epoch": best_epoch, test: test_value, "test_accuracy": acc,
               "time_total_s": ttl, "load_seconds": load, "encode_seconds": enc,
               "train_seconds": train, "started_at": start, "finished_at": end, "node": "testhost",
               "trainable_params": 1000, "total_params": 20000}
        if confusion:
            row["test_confusion"] = (json.dumps(BEST_CONFUSION) if (strategy, tid) == ("tpe", "00001")
                                     else json.dumps([[3, 1, 0], [1, 3, 0], [0, 1, 3]]))
        rows.append(row)
    pd.DataFrame(rows).to_csv(study / "trials.csv", index=False)
    if epochs:
        pd.DataFrame(EPOCHS, columns=["strategy", "trial_id", "epoch", metric, "train_loss",
                                      "timestamp", "time_total_s"]).to_csv(study / "epochs.csv", index=False)
    return study


def test_load_study_reads_the_files_and_keeps_text_ids(tmp_path):
    study = load_study(make_study(tmp_path))
    assert study.name == "fake"
    assert study.metric == "val_bca" and study.test_metric == "test_bca"
    assert study.strategies == ["random", "tpe"]
    assert study.thresholds == [0.8, 0.9]
    assert study.encode_seconds == 50.0
    assert list(study.strategy_trials("random")["trial_id"]) == ["00000", "00001", "00002", "00003"]
    assert set(study.epochs["trial_id"]) == {"00000", "00001", "00002", "00003"}
    assert len(study.unit_epochs("tpe")) == 4   # a folder of one run per strategy: units named after them


def test_default_thresholds_and_missing_epochs(tmp_path):
    study = load_study(make_study(tmp_path, thresholds=None, epochs=False))
    assert study.thresholds == [0.8, 0.9]
    assert study.epochs.empty


def test_other_metric_names_the_test_column(tmp_path):
    study = load_study(make_study(tmp_path, metric="val_ccc"))
    assert study.metric == "val_ccc" and study.test_metric == "test_ccc"
    assert study.trials["test_ccc"].notna().sum() == 5


def test_missing_study_json_names_the_file(tmp_path):
    folder = make_study(tmp_path)
    (folder / "study.json").unlink()
    with pytest.raises(StudyFormatError, match="study.json"):
        load_study(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(StudyFormatError, match="does not exist"):
        load_study(tmp_path / "nowhere")


def test_bad_json_names_the_file(tmp_path):
    folder = make_study(tmp_path)
    (folder / "study.json").write_text("{not json")
    with pytest.raises(StudyFormatError, match="study.json is not valid JSON"):
        load_study(folder)


def test_bad_threshold_field_is_named(tmp_path):
    folder = make_study(tmp_path)
    meta = json.loads((folder / "study.json").read_text())
    meta["experiment"]["thresholds"] = ["high"]
    (folder / "study.json").write_text(json.dumps(meta))
    with pytest.raises(StudyFormatError, match="experiment.thresholds"):
        load_study(folder)


def test_bad_strategy_time_is_named(tmp_path):
    folder = make_study(tmp_path)
    meta = json.loads((folder / "study.json").read_text())
    meta["strategies"]["tpe"]["started_at"] = "yesterday"
    (folder / "study.json").write_text(json.dumps(meta))
    with pytest.raises(StudyFormatError, match="strategies.tpe.started_at"):
        load_study(folder)


def test_missing_trials_column_names_file_and_column(tmp_path):
    folder = make_study(tmp_path)
    trials = pd.read_csv(folder / "trials.csv").drop(columns=["status"])
    trials.to_csv(folder / "trials.csv", index=False)
    with pytest.raises(StudyFormatError, match=r"trials.csv lacks column\(s\) status"):
        load_study(folder)


def test_non_numeric_value_names_file_and_column(tmp_path):
    folder = make_study(tmp_path)
    epochs = pd.read_csv(folder / "epochs.csv", dtype={"timestamp": str})
    epochs.loc[0, "timestamp"] = "noon"
    epochs.to_csv(folder / "epochs.csv", index=False)
    with pytest.raises(StudyFormatError, match="epochs.csv: column timestamp"):
        load_study(folder)


def test_duplicate_trial_is_rejected(tmp_path):
    folder = make_study(tmp_path)
    trials = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
    pd.concat([trials, trials.iloc[[0]]]).to_csv(folder / "trials.csv", index=False)
    with pytest.raises(StudyFormatError, match="trial_id 00000 appears twice in strategy random"):
        load_study(folder)


def test_a_long_trials_file_whose_column_turns_from_numbers_to_text_reads_as_one_type(tmp_path):
    """A long study's cfg_layer is 3 in its first trials and "all" later: read whole, every 3 is the same value
    (chunk by chunk, pandas read the first part as numbers and the rest as text, with a DtypeWarning)."""
    import warnings

    study = make_study(tmp_path)
    trials = pd.read_csv(study / "trials.csv", dtype={"trial_id": str})
    many = pd.concat([trials[trials.strategy == "random"]] * 20000, ignore_index=True)
    many["trial_id"] = [f"{i:06d}" for i in range(len(many))]
    many["trial_index"] = range(len(many))
    many["cfg_layer"] = [3] * (len(many) - 10) + ["all"] * 10
    pd.concat([many, trials[trials.strategy == "tpe"]]).to_csv(study / "trials.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_study(study).trials
    layers = loaded["cfg_layer"].dropna()
    assert {type(v) for v in layers} == {str} and set(layers) == {"3", "all"}
