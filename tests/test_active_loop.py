"""The active-learning loop run directly (no Ray) on the synthetic corpus with tiny-whisper."""
from __future__ import annotations

import numpy as np
import pytest

from ser_tune.active.loop import LoopError, run_loop, schedule_counts
from ser_tune.data import make_split
from ser_tune.training.finetune import FineTuner, TrialData
from ser_tune.training.settings import TrialSettings

FRACTIONS = [0.1, 0.2, 0.5, 1.0]


@pytest.fixture(scope="module")
def data(synthetic_corpus):
    table = synthetic_corpus.table
    split = make_split(table, {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0})
    return TrialData.from_table(table, split.assignment), table


def _settings(**changes):
    return TrialSettings.from_config({"unfreeze": "none", "num_epochs": 2, "lr": 1e-3, "max_length": 1.0,
                                      "batch_size": 16, **changes})


def test_schedule_counts():
    assert schedule_counts([0.1, 0.2, 0.3, 0.5, 1.0], 112) == [11, 22, 34, 56, 112]
    # at least 2 clips, at least one more per round, never past the pool (later fractions dropped)
    assert schedule_counts([0.01, 0.02, 0.5, 0.9, 1.0], 10) == [2, 3, 5, 9, 10]
    assert schedule_counts([0.5, 0.55, 0.6], 4) == [2, 3, 4]
    with pytest.raises(LoopError, match="pool"):
        schedule_counts([0.5], 1)


@pytest.mark.parametrize("acquisition, cold_start", [("entropy", "random"), ("coreset", "kmeans"),
                                                     ("margin", "kmeans")])
def test_pool_is_train_speakers_only_and_nothing_is_picked_twice(data, feature_cache_root, acquisition, cold_start):
    trial_data, table = data
    reported = []
    result = run_loop(trial_data, _settings(), encoder_spec="tiny-whisper", cache_root=feature_cache_root,
                      acquisition=acquisition, fractions=FRACTIONS, cold_start=cold_start, seed=3,
                      report=reported.append)
    train, val, test = (set(trial_data.parts[p].tolist()) for p in ("train", "val", "test"))
    picked = np.concatenate(result.selected).tolist()
    assert len(picked) == len(set(picked))                                   # never twice
    assert set(picked) == train                                              # 100 %: the whole pool ...
    assert not set(picked) & (val | test)                                    # ... and nothing else
    speakers = set(table["speaker"].iloc[picked].astype(str))
    held_out = set(table["speaker"].iloc[sorted(val | test)].astype(str))
    assert speakers and not speakers & held_out
    counts = schedule_counts(FRACTIONS, len(train))
    assert [len(s) for s in result.selected] == np.diff([0] + counts).tolist()
    assert [r["labelled_count"] for r in reported] == counts == [r["labelled_count"] for r in result.rounds]
    assert [r["round"] for r in reported] == [1, 2, 3, 4]
    cumulative = np.cumsum([r["round_seconds"] for r in reported])
    assert np.allclose(cumulative, [r["cumulative_seconds"] for r in reported])
    for r in reported:
        assert 0 <= r["val_bca"] <= 1 and 0 <= r["test_bca"] <= 1


def test_uncertainty_rounds_pick_what_the_previous_model_is_least_sure_of(data, feature_cache_root, monkeypatch):
    """Round 2's picks are exactly the top-entropy clips under round 1's model."""
    trial_data, _ = data
    seen = {}
    original = FineTuner.class_probabilities

    def spy(self, result, idx):
        probs = original(self, result, idx)
        seen.setdefault("rows", np.asarray(idx))
        seen.setdefault("probs", probs)
        return probs

    monkeypatch.setattr(FineTuner, "class_probabilities", spy)
    result = run_loop(trial_data, _settings(), encoder_spec="tiny-whisper", cache_root=feature_cache_root,
                      acquisition="entropy", fractions=[0.1, 0.2], seed=0)
    p = np.clip(seen["probs"], 1e-12, 1)
    entropy = -(seen["probs"] * np.log(p)).sum(1)
    k = len(result.selected[1])
    expected = seen["rows"][np.argsort(-entropy, kind="stable")[:k]]
    assert sorted(result.selected[1].tolist()) == sorted(expected.tolist())
    assert not set(seen["rows"].tolist()) & set(result.selected[0].tolist())   # only the unlabelled were scored


@pytest.mark.parametrize("reinit", [True, False])
def test_reinit_or_continue_from_the_previous_round(data, feature_cache_root, monkeypatch, reinit):
    trial_data, _ = data
    starts = []
    original = FineTuner.run

    def spy(self, *args, init_state=None, **kwargs):
        starts.append(init_state)
        return original(self, *args, init_state=init_state, **kwargs)

    monkeypatch.setattr(FineTuner, "run", spy)
    run_loop(trial_data, _settings(), encoder_spec="tiny-whisper", cache_root=feature_cache_root,
             acquisition="random", fractions=[0.2, 0.4, 0.6], reinit=reinit, seed=0)
    assert starts[0] is None
    if reinit:
        assert starts[1:] == [None, None]
    else:
        assert all(s is not None and "head" in s for s in starts[1:])


def test_full_reference_is_one_round_on_the_whole_pool(data, feature_cache_root):
    trial_data, _ = data
    result = run_loop(trial_data, _settings(), encoder_spec="tiny-whisper", cache_root=feature_cache_root,
                      acquisition="full", fractions=FRACTIONS, seed=0)
    assert len(result.rounds) == 1
    assert result.rounds[0]["labelled_count"] == len(trial_data.parts["train"])
    assert result.rounds[0]["labelled_fraction"] == 1.0


def test_class_probabilities_reproduce_the_models_test_predictions(data, feature_cache_root):
    trial_data, _ = data
    tuner = FineTuner(_settings(), trial_data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
    result = tuner.run()
    probs = tuner.class_probabilities(result, trial_data.parts["test"])
    assert probs.shape == (len(trial_data.parts["test"]), len(trial_data.labels))
    assert np.allclose(probs.sum(1), 1)
    assert (probs.argmax(1) == result.test_predictions).all()
    # a fresh tuner gets the same probabilities from the result alone
    fresh = FineTuner(_settings(), trial_data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
    assert np.allclose(fresh.class_probabilities(result, trial_data.parts["test"]), probs)


@pytest.mark.slow
def test_class_probabilities_with_a_trained_top_layer(data, feature_cache_root):
    trial_data, _ = data
    settings = _settings(unfreeze="top:1", num_epochs=1)
    tuner = FineTuner(settings, trial_data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
    result = tuner.run()
    assert result.state["encoder"]                    # the top layer trained and is part of the result
    probs = tuner.class_probabilities(result, trial_data.parts["test"])
    assert (probs.argmax(1) == result.test_predictions).all()


def test_a_training_set_of_one_batch_plus_one_clip_trains(data, feature_cache_root):
    """17 labelled clips with batch size 16: the lone last clip joins the previous batch (BatchNorm)."""
    import dataclasses

    trial_data, _ = data
    small = dataclasses.replace(trial_data, parts={**trial_data.parts, "train": trial_data.parts["train"][:17]})
    result = FineTuner(_settings(num_epochs=1), small, encoder_spec="tiny-whisper",
                       cache_root=feature_cache_root).run()
    assert 0 <= result.val_bca <= 1


def test_unknown_acquisition_is_named(data, feature_cache_root):
    trial_data, _ = data
    with pytest.raises(LoopError, match="unknown acquisition 'bald'"):
        run_loop(trial_data, _settings(), encoder_spec="tiny-whisper", cache_root=feature_cache_root,
                 acquisition="bald", fractions=FRACTIONS)
