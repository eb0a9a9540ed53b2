"""One trial: fine-tuning on the synthetic corpus, the shared feature cache, NaN handling, export."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ser_tune.data import load_corpus, speaker_split
from ser_tune.encoders import load_encoder
from ser_tune.training.export import load_model
from ser_tune.training.finetune import FineTuner, TrialData, TrialError
from ser_tune.training.settings import SettingsError, TrialSettings

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="module")
def data(synthetic_root):
    corpus = load_corpus("synthetic", synthetic_root)
    split = speaker_split(corpus.table, val_speakers=2, test_speakers=2, seed=0)
    return TrialData.from_table(corpus.table, split.assignment)


def _no_encoder(spec):
    raise AssertionError("the encoder was loaded although the cache should have served every frozen epoch")


class CountingEncoder:
    """Wraps load_encoder and counts forward passes through the frozen part."""

    def __init__(self):
        self.embed_calls = 0
        self.layer_starts = []

    def __call__(self, spec):
        enc = load_encoder(spec)
        original_embed, original_layers = enc.embed, enc.run_layers

        def embed(*a, **k):
            self.embed_calls += 1
            return original_embed(*a, **k)

        def run_layers(hidden, mask, start, end=None):
            self.layer_starts.append(start)
            return original_layers(hidden, mask, start, end)

        enc.embed, enc.run_layers = embed, run_layers
        return enc


def test_head_trial_ends_well_above_chance(data, feature_cache_root):
    settings = TrialSettings(lr=1e-2, num_epochs=15, unfreeze="none", max_length=2.0)
    result = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root).run()
    chance = 1 / len(data.labels)
    assert result.val_bca > 2 * chance
    assert result.test_bca > 1.5 * chance
    assert len(result.history) == 15 and result.best_epoch >= 1
    assert np.array(result.test_confusion).sum() == len(data.parts["test"])


def test_second_trial_with_same_max_length_never_runs_the_frozen_encoder(data, tmp_path):
    first = TrialSettings(lr=1e-3, num_epochs=2, unfreeze="none", max_length=3.0)
    r1 = FineTuner(first, data, encoder_spec="tiny-whisper", cache_root=tmp_path).run()
    assert r1.cache == {"hits": 0, "misses": 1}
    # Another trial, other hyper-parameters, same max_length: served from the cache without loading the encoder.
    second = TrialSettings(lr=5e-3, num_epochs=3, unfreeze="none", max_length=3.0, head="mlp")
    r2 = FineTuner(second, data, encoder_spec="tiny-whisper", cache_root=tmp_path, encoder_loader=_no_encoder).run()
    assert r2.cache == {"hits": 1, "misses": 0}
    # max_length past the longest clip (2 s) keeps whole clips: the same entry serves it.
    third = TrialSettings(lr=5e-3, num_epochs=1, unfreeze="none", max_length=10.0)
    r3 = FineTuner(third, data, encoder_spec="tiny-whisper", cache_root=tmp_path, encoder_loader=_no_encoder).run()
    assert r3.cache["hits"] == 1


def test_top_k_trial_runs_only_its_top_layers(data, feature_cache_root):
    settings = TrialSettings(lr=1e-3, num_epochs=3, unfreeze_epoch=1, unfreeze="top:1", max_length=2.0)
    FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root).run()  # fills the cache
    counter = CountingEncoder()
    result = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root,
                       encoder_loader=counter).run()
    assert result.cache == {"hits": 1, "misses": 0}
    assert counter.embed_calls == 0                      # the frozen bottom never ran
    assert counter.layer_starts and set(counter.layer_starts) == {2}   # only layer 2 of 0..2 ran live
    assert result.history[0]["encoder_trained"] is False and result.history[-1]["encoder_trained"] is True


def test_naive_path_reencodes_every_epoch(data, tmp_path):
    settings = TrialSettings(lr=1e-3, num_epochs=2, unfreeze="none", max_length=2.0, features="naive")
    counter = CountingEncoder()
    result = FineTuner(settings, data, encoder_spec="tiny-whisper", encoder_loader=counter).run()
    batches_per_epoch = math.ceil(len(data.parts["train"]) / settings.batch_size)
    assert counter.embed_calls >= 2 * batches_per_epoch
    assert result.cache == {}


def test_cache_and_naive_agree_on_frozen_features(data, feature_cache_root):
    """The cached path is an optimisation, not another model: same settings, same predictions.
    With 1 s crops every clip has the same length, so no padding enters wav2vec2's group norm on
    either path and the two must agree exactly."""
    common = dict(lr=5e-3, num_epochs=2, unfreeze="none", max_length=1.0, batch_size=16)
    cached = FineTuner(TrialSettings(**common), data, encoder_spec="tiny-wav2vec2", cache_root=feature_cache_root).run()
    naive = FineTuner(TrialSettings(**common, features="naive"), data, encoder_spec="tiny-wav2vec2").run()
    assert cached.val_bca == pytest.approx(naive.val_bca)
    assert cached.test_predictions.tolist() == naive.test_predictions.tolist()


def test_nan_loss_is_a_clear_trial_error(data, feature_cache_root):
    settings = TrialSettings(lr=1e-3, num_epochs=2, unfreeze="none", max_length=2.0)
    tuner = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
    original = torch.nn.CrossEntropyLoss.forward
    try:
        torch.nn.CrossEntropyLoss.forward = lambda self, a, b: original(self, a, b) * float("nan")
        with pytest.raises(TrialError, match="loss became nan at epoch 1"):
            tuner.run()
    finally:
        torch.nn.CrossEntropyLoss.forward = original


def test_checkpoint_resume_continues_from_last_epoch(data, tmp_path, feature_cache_root):
    settings = TrialSettings(lr=1e-2, num_epochs=4, unfreeze="none", max_length=2.0)
    full = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root).run()

    class Stop(Exception):
        pass

    def stop_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Stop

    ck = tmp_path / "ck"
    with pytest.raises(Stop):
        FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root).run(
            report=stop_after_two, checkpoint_dir=ck)
    seen = []
    resumed = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root).run(
        report=lambda m: seen.append(m["epoch"]), resume_dir=ck)
    assert seen == [3, 4]
    assert resumed.val_bca == pytest.approx(full.val_bca)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history])


def test_export_and_reload_reproduce_test_predictions(data, tmp_path, feature_cache_root):
    settings = TrialSettings(lr=3e-3, num_epochs=3, unfreeze_epoch=1, unfreeze="top:1", max_length=2.0)
    tuner = FineTuner(settings, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
    result = tuner.run()
    folder = tuner.export(result, tmp_path / "model")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["encoder"] == "tiny-whisper" and meta["labels"] == data.labels
    model = load_model(folder)
    preds = [int(model.predict_proba(data.audio.get(data.paths[i])[: 32000]).argmax()) for i in data.parts["test"]]
    assert preds == result.test_predictions.tolist()


def test_averaging_in_time_is_the_cache_s_per_clip_average_on_padded_batches():
    from ser_tune.encoders.base import average_in_time
    from ser_tune.encoders.cache import average_frames

    clips = [torch.randn(n, 4) for n in (7, 4, 1)]
    padded = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    mask = torch.arange(7)[None] < torch.tensor([7, 4, 1])[:, None]
    averaged, new_mask = average_in_time(padded, mask, 2)
    assert averaged.shape == (3, 4, 4) and new_mask.sum(1).tolist() == [4, 2, 1]
    for row, clip in enumerate(clips):
        expected = average_frames(clip.numpy(), 2)
        assert np.allclose(averaged[row, : len(expected)].numpy(), expected, atol=1e-6)
    assert average_in_time(padded, mask, 1)[0] is padded


class LengthRecorder(CountingEncoder):
    """CountingEncoder that also notes how many frames each live run of layers was handed."""

    def __call__(self, spec):
        enc = super().__call__(spec)
        counted = enc.run_layers
        self.frames = []

        def run_layers(hidden, mask, start, end=None):
            self.frames.append((start, hidden.shape[1]))
            return counted(hidden, mask, start, end)

        enc.run_layers = run_layers
        return enc


@pytest.mark.parametrize("features", ["cache", "naive"])
def test_trained_layers_read_frames_averaged_in_time_and_the_export_does_the_same(features, data, tmp_path,
                                                                                  feature_cache_root):
    """frame_average 2 under a trained top layer: the layer runs on half the frames from the first epoch
    (the head never sees full-rate features of it), and the exported model averages them the same way."""
    settings = TrialSettings(lr=3e-3, num_epochs=3, unfreeze_epoch=1, unfreeze="top:1", max_length=2.0,
                             frame_average=2, features=features)
    recorder = LengthRecorder()
    tuner = FineTuner(settings, data, encoder_spec="tiny-whisper", encoder_loader=recorder,
                      cache_root=feature_cache_root if features == "cache" else None)
    result = tuner.run()
    top = [frames for start, frames in recorder.frames if start == 2]
    assert top and max(top) == 50   # 2 s of tiny-whisper's 50 frames a second: 100, averaged over 2
    assert result.history[-1]["encoder_trained"] is True
    meta = json.loads((tuner.export(result, tmp_path / "model") / "model.json").read_text())
    assert meta["average_frames_from"] == 2 and meta["settings"]["frame_average"] == 2
    model = load_model(tmp_path / "model")
    preds = [int(model.predict_proba(data.audio.get(data.paths[i])[: 32000]).argmax()) for i in data.parts["test"]]
    assert preds == result.test_predictions.tolist()


def test_frame_average_applies_to_an_attentive_head_and_to_encoder_layers_a_head_trains():
    from ser_tune.training.settings import applicable

    assert applicable({"head": "linear", "frame_average": 2})["frame_average"] == 2
    assert applicable({"head": "attentive", "frame_average": 2})["frame_average"] == 2
    assert "frame_average" not in applicable({"head": "lda", "frame_average": 2})
    assert TrialSettings(unfreeze="top:1", frame_average=2, num_epochs=2).averages_trained_frames
    assert not TrialSettings(unfreeze="none", frame_average=2).averages_trained_frames
    assert not TrialSettings(unfreeze="top:1", frame_average=1, num_epochs=2).averages_trained_frames


def test_settings_errors_name_the_field():
    with pytest.raises(SettingsError, match="'unfreeze'"):
        TrialSettings.from_config({"unfreeze": "top:x"})
    with pytest.raises(SettingsError, match="'num_epochs'"):
        TrialSettings.from_config({"num_epochs": "many"})
    with pytest.raises(SettingsError, match="'learning_rate' is not known"):
        TrialSettings.from_config({"learning_rate": 1e-3})


@pytest.mark.real_data
@pytest.mark.slow
def test_real_whisper_base_on_real_emodb(tmp_path):
    emodb, whisper = SHARED / "data" / "emodb", SHARED / "models" / "whisper-base-encoder"
    if not (emodb.is_dir() and whisper.is_dir()):
        pytest.skip("needs ../shared/data/emodb and ../shared/models/whisper-base-encoder")
    corpus = load_corpus("emodb", emodb)
    table = corpus.table[corpus.table.speaker.isin(["03", "08", "09", "10", "11", "12"])].reset_index(drop=True)
    split = speaker_split(table, val_speakers=1, test_speakers=1, seed=0)   # six speakers keep it short
    data = TrialData.from_table(table, split.assignment)
    settings = TrialSettings(lr=1e-3, num_epochs=3, unfreeze="none", max_length=2.0)
    result = FineTuner(settings, data, encoder_spec=f"hf:{whisper}", cache_root=tmp_path).run()
    assert result.val_bca > 0.5 and result.test_bca > 0.5   # chance is 1/7


def test_a_worker_loads_each_encoder_once_and_hands_each_trial_a_clean_copy(monkeypatch):
    from ser_tune.training import trainable

    loads = []
    monkeypatch.setattr(trainable, "_ENCODERS", {})
    monkeypatch.setattr(trainable, "load_encoder", lambda spec: loads.append(spec) or load_encoder(spec))
    first, second = trainable.pristine_encoder("tiny-whisper"), trainable.pristine_encoder("tiny-whisper")
    assert loads == ["tiny-whisper"] and first is not second
    with torch.no_grad():
        next(first.parameters()).add_(1.0)   # a trial changing its copy in place
    assert not torch.equal(next(first.parameters()), next(second.parameters()))
    assert trainable.worker_audio() is trainable.worker_audio()


def test_the_fine_tuning_schedule_is_transformers_cosine_with_warmup_step_for_step():
    from transformers.optimization import get_cosine_schedule_with_warmup

    from ser_tune.training.finetune import warmup_cosine

    for warmup, total in [(0, 10), (3, 20), (5, 5), (2, 7)]:
        ours, theirs = (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0) for _ in range(2))
        schedules = (warmup_cosine(ours, warmup, total), get_cosine_schedule_with_warmup(theirs, warmup, total))
        for _ in range(total + 2):
            assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
            for optimizer, schedule in zip((ours, theirs), schedules):
                optimizer.step()
                schedule.step()
