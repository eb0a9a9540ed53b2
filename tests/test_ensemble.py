"""An ensemble of a run's best configurations (``evaluation.ensemble``): its held-out figure is the mean of
the refit members' class probabilities, its best member alone stands beside it, and the exported ensemble
predicts what its members predict together."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import balanced_accuracy_score

from ser_tune.config import ConfigError, experiment_from_dict
from ser_tune.training.ensemble import EnsembleError, ensemble_scores, save_test_probabilities

REPO = Path(__file__).resolve().parents[1]


def test_ensemble_scores_are_those_of_the_mean_probabilities(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 40)
    clips = [f"clip{i}.wav" for i in range(40)]
    members = [rng.dirichlet(np.ones(4), 40) for _ in range(3)]
    files = [save_test_probabilities(tmp_path / str(i), p, y, clips) for i, p in enumerate(members)]
    scores = ensemble_scores(files)
    mean = np.mean(members, 0).argmax(1)
    assert scores["test_bca"] == pytest.approx(balanced_accuracy_score(y, mean))
    assert scores["test_accuracy"] == pytest.approx((mean == y).mean())
    # one member alone is its own figure
    assert ensemble_scores(files[:1])["test_bca"] == pytest.approx(balanced_accuracy_score(y, members[0].argmax(1)))


def test_members_scored_on_other_clips_are_refused_by_name(tmp_path):
    y = np.array([0, 1])
    a = save_test_probabilities(tmp_path / "a", np.eye(2), y, ["x", "y"])
    b = save_test_probabilities(tmp_path / "b", np.eye(2), y, ["x", "z"])
    with pytest.raises(EnsembleError, match=f"{b}: its test clips"):
        ensemble_scores([a, b])


def _raw(**changes) -> dict:
    return {"name": "e", "corpus": {"name": "synthetic", "root": "corpus"}, "strategies": ["random"],
            "split": {"kind": "speaker", "val_speakers": 1, "test_speakers": 2, "seed": 0}, **changes}


def test_an_ensemble_needs_refits_and_categories():
    with pytest.raises(ConfigError, match=r"evaluation\.ensemble.*outer_folds > 1 or objective\.cv_folds > 1"):
        experiment_from_dict(_raw(evaluation={"ensemble": 3}))
    with pytest.raises(ConfigError, match=r"evaluation\.ensemble.*class probabilities"):
        experiment_from_dict(_raw(evaluation={"ensemble": 3, "outer_folds": 2}, trial={"task": "dimensions"}))
    with pytest.raises(ConfigError, match=r"evaluation\.ensemble"):
        experiment_from_dict(_raw(evaluation={"ensemble": 0, "outer_folds": 2}))
    assert experiment_from_dict(_raw(evaluation={"ensemble": 3, "outer_folds": 2})).evaluation.ensemble == 3
    # other kinds of study have no ensemble to build: the key is unknown there
    from ser_tune.active.config import active_from_dict

    with pytest.raises(ConfigError, match=r"evaluation\.ensemble is not a known key"):
        active_from_dict({"name": "a", "corpus": {"name": "synthetic"}, "evaluation": {"ensemble": 2}})


@pytest.mark.slow
def test_a_nested_study_with_an_ensemble_scores_exports_and_predicts_it(tmp_path):
    raw = {
        "name": "ens",
        "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"), "options": {"clips_per_cell": 2}},
        "split": {"kind": "speaker", "val_speakers": 1, "test_speakers": 2, "seed": 0},
        "encoder": "tiny-whisper",
        "trial": {"unfreeze": "none", "max_length": 1.0, "num_epochs": 3},
        "space": {"lr": {"loguniform": [1e-3, 3e-2]}, "dropout": {"uniform": [0.0, 0.5]}},
        "strategies": ["random"], "budget": {"trials": 4}, "concurrency": 1,
        "storage": str(tmp_path / "studies"), "objective": {"cv_folds": 2},
        "evaluation": {"outer_folds": 2, "ensemble": 3},
    }
    path = tmp_path / "ens.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = subprocess.run([sys.executable, "-m", "ser_tune.launch", str(path), "--json"], cwd=REPO, text=True,
                         capture_output=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    study = Path(out["study_dir"])
    meta = json.loads((study / "study.json").read_text())
    trials = pd.read_csv(study / "trials.csv")
    refits = trials[trials.unit == "refit"].set_index("refit_of")
    entry = out["strategies"]["random"]
    for fold in (0, 1):
        unit = f"random-f{fold}"
        run_trials = trials[trials.unit == unit].sort_values(["val_bca", "trial_index"], ascending=[False, True])
        members = [unit, f"{unit}@2", f"{unit}@3"]
        # the run's three best configurations by the validation objective, best first, each refit
        assert [str(refits.loc[m].refit_trial) for m in members] == [str(t) for t in run_trials.trial_id[:3]]
        # the fold's figure: the mean of the members' class probabilities, recomputed here from their files
        loaded = [np.load(refits.loc[m].test_probabilities) for m in members]
        y = loaded[0]["labels"]
        for member, data in zip(members, loaded):   # each file is its refit's own test figure
            assert balanced_accuracy_score(y, data["probabilities"].argmax(1)) == pytest.approx(refits.loc[member].test_bca)
        mean = np.mean([d["probabilities"] for d in loaded], 0)
        assert entry["nested_test_bca"]["folds"][fold] == pytest.approx(balanced_accuracy_score(y, mean.argmax(1)))
        assert meta["ensembles"][unit]["members"] == [str(refits.loc[m].trial_id) for m in members]
        # the best configuration alone, beside it
        assert entry["single_model_test_bca"]["folds"][fold] == pytest.approx(refits.loc[unit].test_bca)
    assert entry["single_model_gain_over_probe"] is not None
    report = (study / "report.md").read_text()
    assert "random, ensemble of its 3 best configurations" in report and "its best configuration alone" in report
    # the export: the study's three best configurations refit on every speaker, predicting together
    best = Path(out["best_model"])
    listing = json.loads((best / "ensemble.json").read_text())
    assert listing["configurations"] == [str(refits.loc[m].refit_trial) for m in ("study", "study@2", "study@3")]
    from ser_tune.data import load_audio
    from ser_tune.training.export import load_model

    clips = sorted((tmp_path / "corpus").rglob("*.wav"))[:3]
    predicted = subprocess.run([sys.executable, "-m", "ser_tune.predict", str(best), *map(str, clips), "--json"],
                               cwd=REPO, text=True, capture_output=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = json.loads(predicted.stdout)["predictions"]
    waves = [load_audio(c, 16000) for c in clips]
    alone = [load_model(best / m).predict_many(waves) for m in listing["members"]]
    # the members read one frozen encoder: the ensemble encodes each clip once, not once a member
    ensemble = load_model(best)
    assert len({id(m.encoder) for m in ensemble.members}) == 1
    calls = []
    ensemble.members[0].encoder.register_forward_hook(lambda *_: calls.append(1))
    together = ensemble.predict_many(waves)
    assert len(calls) == len(waves)
    for mine, theirs in zip(together, rows):
        assert mine["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-6)
    # BENCHMARKS' cost of predicting with it, beside its best member (bench/ensemble_latency.py)
    bench = subprocess.run([sys.executable, "bench/ensemble_latency.py", str(best), "--clips", "3", "--repeats", "1",
                            "--out", str(tmp_path / "latency.json")], cwd=REPO, text=True, capture_output=True,
                           timeout=300)
    assert bench.returncode == 0, bench.stderr[-2000:]
    figures = json.loads((tmp_path / "latency.json").read_text())["figures"]
    assert figures["members"] == 3 and figures["encoders"] == 1 and figures["clips"] == 3 and figures["ratio"] > 0
    for i, row in enumerate(rows):
        expected = {label: np.mean([a[i]["probabilities"][label] for a in alone]) for label in row["probabilities"]}
        assert row["probabilities"] == pytest.approx(expected, abs=1e-6)
        assert row["emotion"] == max(expected, key=expected.get)


def test_members_are_the_best_of_each_structure_before_near_copies(tmp_path):
    """A run whose best three trials are one structure (head, layer) with other learning rates: the ensemble
    takes the best of it, then the best of each other structure, and fills with near-copies only when the
    structures run out."""
    from ser_tune.study.folder import StudyFolder

    rows = [("linear", 2, 1e-3, 0.95), ("linear", 2, 2e-3, 0.94), ("linear", 2, 3e-3, 0.93),
            ("lda", 3, None, 0.92), ("linear", 3, 1e-3, 0.91), ("lda", 3, None, 0.90)]
    pd.DataFrame([{"unit": "tpe-f0", "strategy": "tpe", "trial_id": f"t{i}", "trial_index": i, "status": "TERMINATED",
                   "val_bca": val, "cfg_head": head, "cfg_layer": layer, "cfg_lr": lr}
                  for i, (head, layer, lr, val) in enumerate(rows)]).to_csv(tmp_path / "trials.csv", index=False)
    folder = StudyFolder(tmp_path, {"experiment": {"objective": {"metric": "val_bca", "mode": "max"}}})
    structural = frozenset({"head", "layer"})
    ids = lambda trials: [t["trial_id"] for t in trials]  # noqa: E731
    assert ids(folder.top_trials(3, unit="tpe-f0", structural=structural)) == ["t0", "t3", "t4"]
    # t5 repeats t3's configuration: never twice; the near-copies of t0 fill up, best first
    assert ids(folder.top_trials(5, unit="tpe-f0", structural=structural)) == ["t0", "t1", "t2", "t3", "t4"]
    assert ids(folder.top_trials(6, unit="tpe-f0", structural=structural)) == ["t0", "t1", "t2", "t3", "t4"]
    # without structural settings: the best configurations in rank order
    assert ids(folder.top_trials(3, unit="tpe-f0")) == ["t0", "t1", "t2"]


def test_members_cut_at_different_layers_share_one_encode_of_each_clip(tmp_path, feature_cache_root):
    """Frozen members reading layer 1, layer 2 (mean + std) and every layer run the deepest encoder once a
    clip and predict exactly what each predicts alone on its own cut encoder."""
    from ser_tune.data import generate_synthetic, load_corpus, speaker_split
    from ser_tune.training.ensemble import save_ensemble
    from ser_tune.training.export import load_model
    from ser_tune.training.finetune import FineTuner, TrialData
    from ser_tune.training.settings import TrialSettings

    root = generate_synthetic(tmp_path / "corpus", seed=1, n_speakers=4, clips_per_cell=1, duration_range=(0.5, 0.6))
    table = load_corpus("synthetic", root).table
    data = TrialData.from_table(table, speaker_split(table, val_speakers=1, test_speakers=1, seed=0).assignment)
    folders = []
    for i, (layer, pooling, normalize) in enumerate([(1, "mean", "none"), (2, "meanstd", "speaker"),
                                                     ("all", "mean", "none")]):
        settings = TrialSettings(head="logreg", unfreeze="none", max_length=1.0, layer=layer, pooling=pooling,
                                 normalize=normalize)
        tuner = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
        folders.append(tuner.export(tuner.run(), tmp_path / f"member{i}"))
    alone = [load_model(f) for f in folders]
    assert [m.encoder.num_layers for m in alone] == [1, 2, 3]   # three cuts of one spec
    ensemble = load_model(save_ensemble(tmp_path / "ensemble", folders, {}))
    assert len({id(m.encoder) for m in ensemble.members}) == 1
    assert ensemble.members[0].encoder.num_layers == 3
    calls = []
    ensemble.members[0].encoder.register_forward_hook(lambda *_: calls.append(1))
    waves = [data.audio.get(data.paths[i]) for i in range(4)]
    speakers = [str(s) for s in table["speaker"][:4]]
    together = ensemble.probabilities(waves, speakers)
    assert len(calls) == len(waves)
    expected = np.mean([np.stack([[p for p in r["probabilities"].values()] for r in m.predict_many(waves, speakers)])
                        for m in alone], 0)
    np.testing.assert_allclose(together, expected, atol=1e-6)
