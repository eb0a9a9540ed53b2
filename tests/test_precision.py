"""The encoder's arithmetic: fp32, bf16 (autocast), or auto (bf16 only where the CPU has it in hardware).

The suite runs on CPUs with bf16 in hardware (AMX: ``auto`` is bf16 there, in every test that leaves the
default) and without (emulated: slower, same numbers). What is tested is that bf16 gives features within
the stated tolerance of fp32's, that its cache entries never mix with fp32's, that ``auto`` follows the
hardware, and that an exported model predicts in its trial's precision where the CPU has it. The speed is
measured in bench/cost_floor.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ser_tune.data import speaker_split
from ser_tune.encoders import load_encoder, spec_fingerprint
from ser_tune.encoders import precision
from ser_tune.encoders.cache import FeatureCache, encode_batches, equal_length_batches
from ser_tune.training.finetune import FineTuner, TrialData
from ser_tune.training.settings import SettingsError, TrialSettings


def test_auto_is_bf16_only_where_the_cpu_multiplies_it_in_hardware(monkeypatch):
    monkeypatch.setattr(precision, "fast_bf16", lambda: False)
    assert precision.resolve("auto") == "fp32"
    monkeypatch.setattr(precision, "fast_bf16", lambda: True)
    assert precision.resolve("auto") == "bf16"
    assert (precision.resolve("fp32"), precision.resolve("bf16")) == ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        precision.resolve("fp16")
    with pytest.raises(SettingsError, match="'precision' = 'fp16'"):
        TrialSettings.from_config({"precision": "fp16"})


def test_compute_autocasts_matrix_products_to_bf16_and_leaves_fp32_alone():
    a = torch.randn(8, 16)
    with precision.compute("bf16"):
        assert (a @ a.T).dtype == torch.bfloat16
    with precision.compute("fp32"):
        assert (a @ a.T).dtype == torch.float32


@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_bf16_features_keep_the_stated_cosine_to_fp32s(synthetic_corpus, family):
    encoder = load_encoder(f"tiny-{family}")
    waves = [np.asarray(np.random.default_rng(i).standard_normal(16000) * 0.1, dtype=np.float32) for i in range(6)]
    batches = equal_length_batches(waves, 3)
    fp32, bf16 = (next(iter(encode_batches(encoder, waves, batches, [], True, precision=p))) for p in ("fp32", "bf16"))
    assert bf16.pooled.dtype == np.float32   # what leaves the encoder is float32 either way
    assert not np.array_equal(fp32.pooled, bf16.pooled)   # the layers did run in bf16
    for a, b in zip(fp32.pooled.reshape(len(fp32.pooled), -1), bf16.pooled.reshape(len(bf16.pooled), -1)):
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= precision.POOLED_COSINE


def test_bf16_entries_have_keys_of_their_own_and_fp32_keys_are_unchanged(tmp_path):
    clips = ["a.wav", "b.wav"]

    def cache(p):
        return FeatureCache(tmp_path, "tiny-whisper", "0123456789abcdef", lambda: None, precision=p)
    # the key fp32 entries had before precisions existed (a cache made by an earlier version stays valid)
    assert cache("fp32").key(clips, 1.0) == "ba2f4713ccf2e213c759"
    assert cache("bf16").key(clips, 1.0) != cache("fp32").key(clips, 1.0)


def test_a_trial_in_bf16_trains_its_top_layer_on_bf16_features(synthetic_corpus, tmp_path, monkeypatch):
    data = TrialData.from_table(synthetic_corpus.table, speaker_split(synthetic_corpus.table, val_speakers=2,
                                                                      test_speakers=2, seed=0).assignment)
    results, tuners = {}, {}
    for p in ("fp32", "bf16"):
        settings = TrialSettings(lr=1e-3, num_epochs=2, unfreeze="top:1", max_length=1.0, precision=p)
        tuner = tuners[p] = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=tmp_path / "cache")
        results[p] = tuner.run()
        assert tuner.cache.precision == p
    entries = {m.parent.name: m for m in (tmp_path / "cache").glob("*/meta.json")}
    assert len(entries) == 2   # one entry per precision, never mixed
    assert all(0 <= r.val_bca <= 1 and np.isfinite(r.history[-1]["train_loss"]) for r in results.values())
    assert results["fp32"].history[-1]["train_loss"] != results["bf16"].history[-1]["train_loss"]
    assert results["fp32"].history[-1]["train_loss"] == pytest.approx(results["bf16"].history[-1]["train_loss"],
                                                                       rel=0.05)

    # exported, the bf16 model predicts in bf16 where the CPU has it (what its trial did), else in fp32
    from ser_tune.training.export import load_model

    test = data.parts["test"][:8]
    model = load_model(tuners["bf16"].export(results["bf16"], tmp_path / "model"))
    trial = tuners["bf16"].class_probabilities(results["bf16"], test)
    for fast, runs in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "fast_bf16", lambda: fast)
        assert model.precision == runs
        got = np.stack([model.predict_proba(data.audio.get(data.paths[i])[: 16000]) for i in test])
        np.testing.assert_allclose(got, trial, atol=1e-4 if fast else 2e-2)


def test_a_study_encodes_in_the_precision_its_machine_resolves_and_its_trials_read_that(monkeypatch):
    from ser_tune.config import QUICKSTART, experiment_from_dict
    from ser_tune.strategies import StrategyStudy, precisions

    study = StrategyStudy(experiment_from_dict(QUICKSTART))
    monkeypatch.setattr(precision, "fast_bf16", lambda: False)
    assert precisions(study.experiment) == ["fp32"] and study.encoded_precision() == {"precision": "fp32"}
    monkeypatch.setattr(precision, "fast_bf16", lambda: True)
    assert precisions(study.experiment) == ["bf16"] and study.encoded_precision() == {"precision": "bf16"}
    searched = StrategyStudy(experiment_from_dict({**QUICKSTART, "space": {
        **QUICKSTART["space"], "precision": {"choice": ["fp32", "bf16"]}}}))
    assert precisions(searched.experiment) == ["fp32", "bf16"] and searched.encoded_precision() == {}
