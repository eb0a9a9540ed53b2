"""`python -m ser_tune.active`: the quickstart end to end, and config errors that name the field."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ser_tune.active.config import active_from_dict, load_active
from ser_tune.active.report import TARGETS
from ser_tune.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "active_quickstart.yaml"


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "ser_tune.active", *map(str, args)], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    cfg = load_active(QUICKSTART)
    active = cfg.active
    assert True in active.tapt and False in active.tapt    # the quickstart shows TAPT on and off
    run = _run(QUICKSTART, "--json", "--storage", tmp_path / "studies")
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    study = Path(out["study_dir"])
    assert study.parent == tmp_path / "studies"
    assert run.stderr.splitlines()[0] == f"study folder: {study}"
    rounds = pd.read_csv(study / "rounds.csv")
    meta = json.loads((study / "study.json").read_text())
    pool = meta["pool"]["clips"]

    # every trial (acquisitions + full, x TAPT, x seeds) finished and reported every round
    assert out["trials"] == (len(active.acquisitions) + 1) * len(active.tapt) * len(active.seeds)
    assert (rounds.status == "TERMINATED").all(), rounds[rounds.status != "TERMINATED"].error.unique()
    for (acq, tapt, seed), g in rounds.groupby(["acquisition", "tapt", "seed"]):
        g = g.sort_values("round")
        if acq == "full":
            assert g["round"].tolist() == [1] and g.labelled_count.tolist() == [pool]
        else:
            assert g["round"].tolist() == list(range(1, len(active.fractions) + 1)), (acq, tapt)
            assert np.allclose(g.target_fraction, active.fractions)
            assert g.labelled_count.is_monotonic_increasing and g.labelled_count.iloc[-1] == pool
            assert (np.diff(g.cumulative_seconds) > 0).all()
        assert g.test_bca.between(0, 1).all() and g.val_bca.between(0, 1).all()
    assert set(rounds.acquisition) == set(active.acquisitions) | {"full"}
    assert set(rounds.tapt) == {False, True}

    # the table's numbers are rounds.csv's (one seed: the values at the scheduled fraction >= target)
    table = pd.read_csv(study / "active_table.csv")
    assert len(table) == (len(active.acquisitions) + 1) * len(active.tapt)
    for row in table.itertuples():
        g = rounds[(rounds.acquisition == row.acquisition) & (rounds.tapt == row.tapt)]
        for target in TARGETS:
            key = f"{100 * target:.0f}"
            if row.acquisition == "full" and target < 1:
                assert pd.isna(getattr(row, f"test_bca_{key}"))
                continue
            used = min(f for f in g.target_fraction.unique() if f >= target - 1e-9)
            assert getattr(row, f"fraction_used_{key}") == used
            at = g[np.isclose(g.target_fraction, used)].iloc[0]
            assert getattr(row, f"test_bca_{key}") == pytest.approx(at.test_bca)
            assert getattr(row, f"seconds_{key}") == pytest.approx(at.cumulative_seconds)
    # ... and so are the JSON table's and the printed table's
    first = next(r for r in out["table"] if r["acquisition"] == active.acquisitions[0] and not r["tapt"])
    g = rounds[(rounds.acquisition == active.acquisitions[0]) & ~rounds.tapt]
    assert first["at"]["0.1"]["test_bca"] == pytest.approx(g[np.isclose(g.target_fraction, 0.1)].test_bca.iloc[0])
    printed = [l for l in run.stderr.splitlines() if l.startswith(active.acquisitions[0] + " ")]
    assert printed and f"{first['at']['0.1']['test_bca']:.3f}" in printed[0]

    # plots and the report
    for name in ("active_bca_vs_fraction.png", "active_bca_vs_seconds.png"):
        png = (study / name).read_bytes()
        assert png[:4] == b"\x89PNG" and len(png) > 5000
    report = (study / "active.md").read_text()
    assert "| acquisition | TAPT |" in report and "Synthetic corpus" in report

    # the pool: train speakers only; nothing labelled twice; TAPT never saw the test speakers
    split = json.loads((study / "split.json").read_text())
    held_out = set(split["parts"]["val"]) | set(split["parts"]["test"])
    for path in (study / "selections").glob("*.json"):
        picked = [p for r in json.loads(path.read_text())["rounds"] for p in r]
        assert len(picked) == len(set(picked)) == pool, path.name
        assert set(picked) == set(split["parts"]["train"]) and not set(picked) & held_out
    assert meta["tapt"]["clips"] == len(split["parts"]["train"]) + len(split["parts"]["val"])
    assert meta["tapt"]["test_audio"] is False
    assert meta["tapt"]["spec"] != meta["experiment"]["encoder"]
    assert len(meta["encode"]) == 2                        # base and TAPT encoder: one cache entry each


BASE = {
    "name": "t",
    "corpus": {"name": "synthetic"},
    "encoder": "tiny-whisper",
    "trial": {"num_epochs": 2},
    "active": {"fractions": [0.1, 0.5, 1.0], "acquisitions": ["entropy", "random"], "tapt": [False]},
}


def _with(path: str, value):
    raw = copy.deepcopy(BASE)
    node = raw
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return raw


@pytest.mark.parametrize("raw, field", [
    (_with("active.fractions", [0.2, 0.1, 1.0]), "active.fractions"),
    (_with("active.fractions", [0.1, 1.5]), "active.fractions[1]"),
    (_with("active.acquisitions", ["entropy", "bald"]), "active.acquisitions[1]"),
    (_with("active.acquisitions", ["entropy", "entropy"]), "active.acquisitions"),
    (_with("active.cold_start", "farthest"), "active.cold_start"),
    (_with("active.reinit", "yes"), "active.reinit"),
    (_with("active.seeds", [0, -1]), "active.seeds[1]"),
    (_with("active.tapt", ["no"]), "active.tapt"),
    (_with("active.budget", 3), "active.budget"),
    (_with("trial.num_epochs", 0), "trial"),
    (_with("resources", {"cpus_per_trial": -1}), "resources.cpus_per_trial"),
    ({**BASE, "strategies": ["tpe"]}, "strategies"),
    (_with("active.tapt_settings", {"steps": 0}), "active.tapt_settings.steps must be >= 1 (got 0)"),
    (_with("active.tapt_settings", {"stepz": 10}), "active.tapt_settings.stepz: unknown TAPT setting"),
    (_with("active.seeds", [1, 1]), "active.seeds: a seed is listed twice"),
    (_with("corpus", {"name": "synthetic", "min_duration": -1}), "corpus.min_duration must be a positive number"),
    (_with("evaluation", {"outer_folds": 0}), "evaluation.outer_folds must be a positive integer (got 0)"),
    (_with("evaluation", {"folds": 2}), "evaluation.folds is not a known key; known keys: outer_folds"),
    ({**_with("evaluation", {"outer_folds": 3}), "split": {"kind": "random"}},
     "evaluation.outer_folds: speaker folds need speakers, but split.kind is 'random'"),
    # no search objective in active learning, so no objective.cv_folds: refused with the reason
    (_with("objective", {"cv_folds": 3}), "objective.cv_folds does not apply"),
])
def test_config_errors_name_the_file_and_field(raw, field):
    with pytest.raises(ConfigError) as err:
        active_from_dict(raw, source="experiments/x.yaml")
    message = str(err.value)
    assert message.startswith("experiments/x.yaml: ") and field in message and "\n" not in message, message


def test_defaults_and_the_shipped_experiments():
    cfg = active_from_dict(copy.deepcopy(BASE))
    assert cfg.experiment.trial == {"unfreeze": "none", "num_epochs": 2}          # head only by default
    assert cfg.active.trial_acquisitions == ["entropy", "random", "full"]
    assert cfg.active.reinit is True and cfg.active.cold_start == "random"
    assert cfg.evaluation.outer_folds == 1 and cfg.experiment.evaluation.outer_folds == 1
    assert cfg.active.seeds == [0] and active_from_dict({**copy.deepcopy(BASE), "seed": 7}).active.seeds == [7]
    if not (REPO.parent / "shared" / "models" / "whisper-base-encoder").is_dir():   # a clone without shared/
        with pytest.raises(ConfigError, match="active_emodb.yaml: encoder: no encoder folder"):
            load_active(REPO / "experiments" / "active_emodb.yaml")
        return
    emodb = load_active(REPO / "experiments" / "active_emodb.yaml")
    assert emodb.active.tapt == [False] and emodb.experiment.encoder.startswith("hf:")
    assert "coreset" in emodb.active.acquisitions


def test_to_dict_round_trips_with_the_new_sections():
    raw = {**copy.deepcopy(BASE), "evaluation": {"outer_folds": 3},
           "corpus": {"name": "synthetic", "drop_labels": ["disgust"], "min_duration": 0.5}}
    cfg = active_from_dict(raw)
    assert cfg.evaluation.outer_folds == 3 and cfg.corpus.drop_labels == ["disgust"]
    saved = cfg.to_dict()
    json.dumps(saved)
    assert saved["evaluation"] == {"outer_folds": 3} and "space" not in saved and "objective" not in saved
    saved.pop("source")
    again = active_from_dict(copy.deepcopy(saved)).to_dict()
    assert {k: v for k, v in again.items() if k != "source"} == saved
    exp = cfg.experiment                  # what ser_tune.study.Study gets: the same study, no search
    assert exp.trial == cfg.trial and exp.space == {} and exp.strategies == []
    assert exp.to_dict()["evaluation"] == {"outer_folds": 3}


def test_tapt_with_an_encoder_without_an_objective_is_one_error_line(tmp_path):
    raw = _with("active.tapt", [False, True])      # tiny-whisper: Whisper has no self-supervised objective
    raw["storage"] = str(tmp_path / "studies")
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = _run(path, timeout=120)
    assert run.returncode == 2
    errors = [l for l in run.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "active.tapt" in errors[0] and str(path) in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "studies").exists()                      # failed before any study or trial


def test_missing_corpus_is_one_error_line_and_leaves_no_study(tmp_path):
    raw = _with("corpus", {"name": "emodb", "root": str(tmp_path / "no-such-emodb")})
    raw["storage"] = str(tmp_path / "studies")
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = _run(path, timeout=120)
    assert run.returncode == 2
    errors = [l for l in run.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "no-such-emodb" in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert [p.name for p in (tmp_path / "studies").glob("*") if not p.name.startswith("_")] == []


@pytest.mark.slow
def test_killed_active_study_resumes_keeping_finished_trials(tmp_path):
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw.update({"name": "resume", "encoder": "tiny-whisper", "storage": str(tmp_path / "studies"),
                "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus")}})
    # about 2 s a trial on a fast CPU, 2 at a time: the kill comes mid-study (with 12 epochs a trial took 0.3 s on
    # a Xeon with AMX, and the third had ended before the kill)
    raw["trial"]["num_epochs"] = 150
    # three trials, two at a time: when the first has finished, the third has just begun
    acquisitions = ["entropy", "random", "coreset"]
    raw["active"].update({"acquisitions": acquisitions, "tapt": [False], "fractions": [0.2, 0.5, 1.0],
                          "full_reference": False})
    raw["active"].pop("tapt_settings", None)
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(raw))
    # the README's `active CONFIG --storage DIR --cpus-per-trial 1` (the YAML's own values: the resume, with
    # neither, finds the study)
    proc = subprocess.Popen([sys.executable, "-m", "ser_tune.active", str(path), "--storage", str(tmp_path / "studies"),
                             "--cpus-per-trial", "1"], cwd=REPO, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def rounds_reported(result: Path) -> list[int]:
        return [json.loads(l)["round"] for l in result.read_text().splitlines() if l.strip().endswith("}")]

    finished_before: dict[str, list[int]] = {}
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not finished_before:
            for result in (tmp_path / "studies").glob("resume-*/active/*/result.json"):
                reported = rounds_reported(result)   # read once: what was seen is what is kept
                if reported[-1:] == [3]:
                    finished_before[result.parent.name] = reported
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # the driver and the Ray it started die mid-study
        proc.wait(timeout=60)
    assert finished_before, "no trial finished in time"
    study = next((tmp_path / "studies").glob("resume-*"))
    assert not (study / "rounds.csv").exists()
    time.sleep(2)

    run = _run(path, "--resume", "--json")
    assert run.returncode == 0, run.stderr[-4000:]
    assert len(run.stdout.strip().splitlines()) == 1           # --json: the JSON object alone
    assert Path(json.loads(run.stdout)["study_dir"]) == study
    rounds = pd.read_csv(study / "rounds.csv")
    assert (rounds.status == "TERMINATED").all(), rounds.error.unique()
    for acquisition, g in rounds.groupby("acquisition"):
        assert g["round"].tolist() == [1, 2, 3], acquisition          # every round once
    assert sorted(rounds.acquisition.unique()) == sorted(acquisitions)
    # a trial finished before the kill was kept, not run again
    for name, before in finished_before.items():
        assert rounds_reported(study / "active" / name / "result.json") == before == [1, 2, 3]
