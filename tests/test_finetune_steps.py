"""FineTuner's named steps driven from outside: several tuners in lockstep, the caller choosing the epoch."""
from __future__ import annotations

import numpy as np
import pytest

from ser_tune.data import speaker_split
from ser_tune.training.finetune import FineTuner, TrialData, TrialError
from ser_tune.training.settings import TrialSettings

SETTINGS = dict(lr=1e-2, num_epochs=4, unfreeze="none", max_length=1.0, dropout=0.3)


@pytest.fixture(scope="module")
def folds(synthetic_corpus):
    """Two assignments of the same clips (other validation and test speakers), as two CV folds."""
    return [TrialData.from_table(synthetic_corpus.table,
                                 speaker_split(synthetic_corpus.table, val_speakers=2, test_speakers=2, seed=seed).assignment)
            for seed in (0, 1)]


def _tuners(folds, cache):
    return [FineTuner(TrialSettings(**SETTINGS), data, encoder_spec="tiny-whisper", cache_root=cache) for data in folds]


def test_two_tuners_in_lockstep_keep_the_epoch_best_on_their_mean(folds, feature_cache_root):
    tuners = _tuners(folds, feature_cache_root)
    states = [tuner.start() for tuner in tuners]
    means, best = [], -np.inf
    while not states[0].done:
        scores = [tuner.fit_epoch(state)["val_bca"] for tuner, state in zip(tuners, states)]
        means.append(float(np.mean(scores)))
        if means[-1] > best:   # the caller, not the tuners, decides which epoch is kept
            best = means[-1]
            for tuner, state in zip(tuners, states):
                tuner.keep_epoch(state)
    results = [tuner.finish(state) for tuner, state in zip(tuners, states)]
    chosen = int(np.argmax(means)) + 1
    for result in results:
        assert result.best_epoch == chosen
        assert result.val_bca == result.history[chosen - 1]["epoch_val_bca"]
        assert [row["best_epoch"] for row in result.history][chosen - 1:] == [chosen] * (len(means) - chosen + 1)
    # Interleaving changes nothing for either tuner: each one alone, through run(), trains the same epochs
    # (same clip order, same dropout draws) and scores them the same.
    alone = [tuner.run() for tuner in _tuners(folds, feature_cache_root)]
    for lockstep, single in zip(results, alone):
        assert [r["epoch_val_bca"] for r in lockstep.history] == [r["epoch_val_bca"] for r in single.history]
        assert [r["train_loss"] for r in lockstep.history] == [r["train_loss"] for r in single.history]


def test_the_kept_epoch_is_the_model_finish_returns(folds, feature_cache_root):
    tuner = _tuners(folds[:1], feature_cache_root)[0]
    state = tuner.start()
    with pytest.raises(TrialError, match="no epoch was trained"):
        tuner.keep_epoch(state)
    first = tuner.fit_epoch(state)
    tuner.keep_epoch(state)                       # epoch 1, whatever the later epochs score
    while not state.done:
        tuner.fit_epoch(state)
    with pytest.raises(TrialError, match="all 4 epochs are trained"):
        tuner.fit_epoch(state)
    result = tuner.finish(state)
    assert result.best_epoch == 1 and result.val_metrics == first
    val = tuner.data.parts["val"]
    probs = tuner.class_probabilities(result, val)   # the returned weights score validation as epoch 1 did
    from ser_tune.training.metrics import bca

    assert bca(tuner.data.y[val], probs.argmax(1)) == pytest.approx(first["val_bca"])


def test_saved_state_resumes_a_tuner_driven_step_by_step(folds, feature_cache_root, tmp_path):
    whole = _tuners(folds[:1], feature_cache_root)[0].run()
    tuner = _tuners(folds[:1], feature_cache_root)[0]
    state = tuner.start()
    for _ in range(2):
        if tuner.fit_epoch(state)["val_bca"] > state.best["score"]:
            tuner.keep_epoch(state)
    tuner.save_state(state, tmp_path)
    again = _tuners(folds[:1], feature_cache_root)[0]
    resumed = again.start(resume_dir=tmp_path)
    assert resumed.epoch == 2 and len(resumed.history) == 2
    while not resumed.done:
        if again.fit_epoch(resumed)["val_bca"] > resumed.best["score"]:
            again.keep_epoch(resumed)
    result = again.finish(resumed)
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in whole.history]
    assert result.best_epoch == whole.best_epoch and result.test_bca == whole.test_bca
