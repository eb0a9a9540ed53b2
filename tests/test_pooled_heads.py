"""Pooled statistics in the shared cache (mean and standard deviation per layer), what a head reads
(pooling, layer index / weighted / all), and the heads scikit-learn fits (logistic regression, LDA)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ser_tune.data import crop, load_corpus, speaker_split

from ser_tune.encoders.cache import FeatureCache, masked_mean_std
from ser_tune.encoders import load_encoder, spec_fingerprint
from ser_tune.training.export import load_model
from ser_tune.training.finetune import FineTuner, TrialData
from ser_tune.training.head import EmotionHead, stack_statistics
from ser_tune.training.settings import SettingsError, TrialSettings


@pytest.fixture(scope="module")
def data(synthetic_root):
    corpus = load_corpus("synthetic", synthetic_root)
    split = speaker_split(corpus.table, val_speakers=2, test_speakers=2, seed=0)
    return TrialData.from_table(corpus.table, split.assignment)


def test_masked_mean_std_equal_numpys_over_the_unpadded_frames():
    rng = np.random.default_rng(0)
    hidden = torch.from_numpy(rng.normal(3.0, 2.0, size=(3, 9, 4)).astype(np.float32))
    lengths = [9, 5, 1]
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    hidden[~mask] = 1e3   # padding that would show in any statistic that read it
    mean, std = masked_mean_std(hidden, mask)
    for row, n in enumerate(lengths):
        frames = hidden[row, :n].double().numpy()
        np.testing.assert_allclose(mean[row].numpy(), frames.mean(0), rtol=1e-5)
        np.testing.assert_allclose(std[row].numpy(), frames.std(0), rtol=1e-4, atol=1e-6)


def test_the_cache_stores_each_layers_mean_and_std_over_the_clips_frames(data, tmp_path):
    """The shared encode's pooled statistics equal numpy's over the frames it keeps for the same clips
    (every hidden state's frames asked for, each cut to the clip's own length)."""
    cache = FeatureCache(tmp_path, "tiny-whisper", spec_fingerprint("tiny-whisper"),
                         lambda: load_encoder("tiny-whisper"))
    paths = data.paths[:10]
    states = cache.encoder.num_layers + 1
    feats = cache.get(paths, lambda i: crop(data.audio.get(paths[i]), 1.5, 16000), 1.5, boundaries=range(states))
    assert feats.pooled.shape == feats.pooled_std.shape == (10, states, cache.encoder.hidden_size)
    for i in range(10):
        for b in range(states):
            frames = np.asarray(feats.frames_of(b, i), dtype=np.float64)
            assert len(frames) == feats.lengths[i]
            np.testing.assert_allclose(feats.pooled[i, b], frames.mean(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(feats.pooled_std[i, b], frames.std(0), rtol=1e-4, atol=1e-5)
    # read back from disk (a hit) the same
    again = cache.get(paths, lambda i: crop(data.audio.get(paths[i]), 1.5, 16000), 1.5)
    assert cache.stats.hits == 1 and np.array_equal(again.pooled_std, feats.pooled_std)
    assert stack_statistics(again.pooled, again.pooled_std, "meanstd").shape[-1] == 2 * again.pooled.shape[-1]


@pytest.mark.parametrize("layer, width", [(1, 8), ("all", 24), ("weighted", 8)])
def test_a_head_reads_one_layer_a_mix_or_every_layer(layer, width):
    head = EmotionHead(3, 8, 4, layer=layer)
    head.eval()
    assert head.classifier.in_features == width
    assert head(torch.randn(5, 3, 8)).shape == (5, 4)


def test_logreg_head_is_sklearns_logistic_regression_on_the_same_features_and_c(data, feature_cache_root):
    settings = TrialSettings(head="logreg", C=0.3, layer="all", pooling="meanstd", max_length=2.0)
    tuner = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
    result = tuner.run()
    assert result.best_epoch == 1 and len(result.history) == 1    # fitted once, to convergence

    feats = tuner.cached_features()
    x = np.concatenate([feats.pooled, feats.pooled_std], axis=-1).reshape(len(data.y), -1)
    train, test = data.parts["train"], data.parts["test"]
    scaler = StandardScaler().fit(x[train])
    reference = LogisticRegression(C=0.3, class_weight="balanced", max_iter=1000, random_state=0)
    reference.fit(scaler.transform(x[train]), data.y[train])
    expected = reference.predict_proba(scaler.transform(x[test]))
    np.testing.assert_allclose(tuner.class_probabilities(result, test), expected, atol=1e-4)
    assert result.test_predictions.tolist() == expected.argmax(1).tolist()


@pytest.mark.parametrize("head", [{"head": "logreg", "C": 2.0, "layer": 1},
                                  {"head": "lda", "shrinkage": 0.3, "layer": 2}], ids=["logreg", "lda"])
def test_fitted_head_trials_export_to_the_same_model(head, data, tmp_path, feature_cache_root):
    settings = TrialSettings(**head, pooling="meanstd", max_length=2.0)
    tuner = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
    result = tuner.run(checkpoint_dir=tmp_path / "trial")
    model = load_model(tmp_path / "trial" / "model")
    preds = [int(model.predict_proba(data.audio.get(data.paths[i])[: 32000]).argmax()) for i in data.parts["test"]]
    assert preds == result.test_predictions.tolist()


def test_lda_head_is_sklearns_shrinkage_lda_on_the_same_features_with_equal_priors(data, feature_cache_root):
    """head: lda predicts (and scores) as scikit-learn's standardise -> PCA -> shrinkage LDA pipeline on
    the statistics the head reads, with equal class priors; its shrinkage changes the model."""
    import doctest

    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    import ser_tune.training.fitted as fitted

    assert doctest.testmod(fitted).failed == 0
    results = {}
    for shrinkage in (0.05, 0.9):
        settings = TrialSettings(head="lda", shrinkage=shrinkage, layer="all", pooling="mean", max_length=2.0)
        tuner = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
        result = tuner.run()
        assert result.best_epoch == 1 and len(result.history) == 1    # fitted once, in closed form
        x = tuner.cached_features().pooled.reshape(len(data.y), -1)
        train, test = data.parts["train"], data.parts["test"]
        k = len(np.unique(data.y[train]))
        scaler = StandardScaler().fit(x[train])
        pca = PCA(svd_solver="full").fit(scaler.transform(x[train]))
        reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage, priors=np.full(k, 1 / k))
        reference.fit(pca.transform(scaler.transform(x[train])), data.y[train])
        expected = reference.predict_proba(pca.transform(scaler.transform(x[test])))
        np.testing.assert_allclose(tuner.class_probabilities(result, test), expected, atol=1e-4)
        assert result.test_predictions.tolist() == expected.argmax(1).tolist()
        results[shrinkage] = expected
    assert not np.allclose(results[0.05], results[0.9], atol=1e-3)


@pytest.mark.parametrize("head", ["logreg", "lda"])
def test_a_fitted_head_predicts_as_its_model_with_a_feature_that_barely_moves(head):
    """A pooled feature all but constant (std 3e-7 around 14, as position embeddings pooled over a clip): the
    head in float32 still predicts what the scikit-learn model does (its scale is floored), not one class."""
    from ser_tune.training.fitted import fit_head
    from ser_tune.training.head import load_fitted

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    pooled = rng.normal(size=(120, 3, 8)).astype(np.float32)
    pooled[:, 1, :4] += y[:, None]                       # layer 1 carries the class
    pooled[:, 0, 0] = 14.0 + rng.normal(scale=3e-7, size=120)
    model = fit_head(head, pooled.reshape(120, -1), y, C=1.0, shrinkage=0.3, seed=0, class_weighted=True)
    emotion_head = EmotionHead(3, 8, 4, layer="all", kind=head)
    load_fitted(emotion_head, model, 8)
    emotion_head.eval()
    with torch.no_grad():
        predicted = emotion_head(torch.from_numpy(pooled)).argmax(1).numpy()
    assert (predicted == model.predict(pooled.reshape(120, -1))).mean() > 0.98
    assert (predicted == y).mean() > 0.8


def test_settings_that_do_not_fit_a_logreg_head_are_named():
    with pytest.raises(SettingsError, match="'layer'.*trained head"):
        TrialSettings.from_config({"head": "logreg", "layer": "weighted"})
    with pytest.raises(SettingsError, match="'head'.*categories"):
        TrialSettings.from_config({"head": "logreg", "layer": 1, "task": "dimensions"})
    with pytest.raises(SettingsError, match="'layer'.*trained head"):
        TrialSettings.from_config({"head": "lda", "layer": "weighted"})
    with pytest.raises(SettingsError, match="'shrinkage'"):
        TrialSettings.from_config({"head": "lda", "layer": 1, "shrinkage": 1.5})
    assert not TrialSettings.from_config({"head": "logreg", "layer": 1, "unfreeze": "top:2"}).encoder_trains


def test_a_probe_of_a_study_that_searches_normalize_chooses_it_on_the_inner_folds():
    from types import SimpleNamespace

    from ser_tune.results.held_out import trials_normalization
    from ser_tune.training.probe import CHOSEN, choose_normalization

    by_kind = {"none": [{"cv_bca": 0.80, "test_bca": 0.9}, {"cv_bca": 0.70, "test_bca": 0.6}],
               "speaker": [{"cv_bca": 0.75, "test_bca": 0.5}, {"cv_bca": 0.85, "test_bca": 0.8}]}
    chosen = choose_normalization(by_kind)
    assert [(c["normalize"], c["test_bca"]) for c in chosen] == [("none", 0.9), ("speaker", 0.8)]
    # the trials of such a study are paired with that probe; with normalize fixed, with the fixed one's
    searched = SimpleNamespace(meta={"experiment": {"space": {"normalize": {"choice": ["none", "speaker"]}}}})
    fixed = SimpleNamespace(meta={"experiment": {"space": {"lr": {}}, "trial": {"normalize": "speaker"}}})
    assert trials_normalization(searched) == CHOSEN and trials_normalization(fixed) == "speaker"
