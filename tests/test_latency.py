"""Latency per second of audio, model size on disk and parameter counts."""
from __future__ import annotations

import doctest
import time

import numpy as np
import pytest
import torch

from ser_tune.encoders import load_encoder
from ser_tune.training import latency as latency_module
from ser_tune.training.export import TunedModel
from ser_tune.training.head import EmotionHead
from ser_tune.training.latency import count_parameters, measure_latency, model_bytes

RATE = 16000
SLEEP_PER_AUDIO_SECOND = 0.05   # the fake model's known cost: 50 ms per second of audio


class SleepingModel:
    """Takes exactly (at least) SLEEP_PER_AUDIO_SECOND per second of audio: the arithmetic's truth."""

    def __init__(self):
        self.calls = 0

    def __call__(self, wave):
        self.calls += 1
        time.sleep(len(wave) / RATE * SLEEP_PER_AUDIO_SECOND)
        return wave[:1]


def _clips(*seconds):
    return [np.zeros(int(s * RATE), np.float32) for s in seconds]


def test_module_doctest_runs():
    assert doctest.testmod(latency_module).failed == 0


def test_latency_is_per_second_of_audio_whatever_the_clip_lengths():
    model = SleepingModel()
    short = measure_latency(model, _clips(0.5, 0.5), RATE, repeats=3, warmup=1)
    long = measure_latency(model, _clips(2.0, 1.0), RATE, repeats=3, warmup=0)
    assert model.calls == 2 * (3 + 1) + 2 * 3   # warmup passes run every clip too, untimed
    assert short.audio_seconds == 1.0 and long.audio_seconds == 3.0 and long.clips == 2
    expected = SLEEP_PER_AUDIO_SECOND * 1000   # 50 ms per second of audio
    for result in (short, long):
        assert expected * 0.999 <= result.min_ms_per_s <= result.latency_ms_per_s <= result.max_ms_per_s
        assert result.latency_ms_per_s < expected * 1.4   # sleep overshoots only by scheduling
        assert len(result.per_repeat_ms_per_s) == result.repeats == 3
        assert result.iqr_ms_per_s >= 0 and result.cv >= 0
        assert result.latency_ms_per_s == pytest.approx(np.median(result.per_repeat_ms_per_s))
        # sleeping takes wall-clock, not CPU: the thread's CPU time stays far below the latency
        assert 0 <= result.cpu_ms_per_s < expected / 5 and result.cpu_iqr_ms_per_s >= 0


def test_cpu_time_tracks_the_work_of_a_busy_model():
    def busy(wave):   # about 40 ms of arithmetic per second of audio
        end = time.thread_time() + len(wave) / RATE * 0.04
        while time.thread_time() < end:
            pass
        return wave[:1]

    result = measure_latency(busy, _clips(0.5, 0.5), RATE, repeats=3, warmup=0)
    assert 40 * 0.99 <= result.cpu_ms_per_s < 40 * 1.3
    assert result.cpu_ms_per_s <= result.latency_ms_per_s * 1.01


def test_threads_are_set_while_measuring_and_restored():
    original = torch.get_num_threads()
    torch.set_num_threads(2)   # not 1, so a measurement that forgot to restore would show
    try:
        seen = []
        measure_latency(lambda wave: seen.append(torch.get_num_threads()), _clips(0.1), RATE,
                        repeats=2, threads=1)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2

        def broken(wave):
            raise RuntimeError("model failed")

        with pytest.raises(RuntimeError):
            measure_latency(broken, _clips(0.1), RATE, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


@pytest.mark.parametrize("waves, fragment", [
    ([], "no clips"),
    ([np.zeros(100, np.float32), np.zeros(0, np.float32)], "clip 1 has no samples"),
    ([np.zeros((2, 100), np.float32)], "clip 0 has shape (2, 100)"),
])
def test_bad_clips_are_one_clear_line(waves, fragment):
    with pytest.raises(ValueError) as err:
        measure_latency(SleepingModel(), waves, RATE)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"repeats": 0}, "repeats must be at least 1"),
    ({"warmup": -1}, "warmup must be at least 0"),
    ({"threads": 0}, "threads must be at least 1"),
])
def test_bad_settings_are_one_clear_line(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        measure_latency(SleepingModel(), _clips(0.1), RATE, **kwargs)


def _tuned_model(max_length=None):
    """A real TunedModel (training.export) on a tiny encoder, recording the clip lengths it encodes."""
    encoder = load_encoder("tiny-wav2vec2")
    head = EmotionHead(encoder.num_layers + 1, encoder.hidden_size, 4).eval()
    meta = {"labels": ["angry", "happy", "neutral", "sad"], "sample_rate": RATE, "max_length": max_length}
    model = TunedModel(meta=meta, encoder=encoder, head=head)
    model.encoded = []
    encoder.register_forward_hook(lambda module, args, out: model.encoded.append(args[0].shape[1]))
    return model


def test_a_tuned_model_runs_encoder_and_head_and_counts_cropped_audio():
    model = _tuned_model(max_length=0.5)
    result = measure_latency(model, _clips(1.0, 0.25), RATE, repeats=2, warmup=0)
    assert model.encoded == [8000, 4000] * 2
    assert result.audio_seconds == 0.75   # the 1 s clip counts its 0.5 s the model runs
    assert result.latency_ms_per_s > 0


def test_a_sample_rate_mismatch_is_named():
    with pytest.raises(ValueError, match="expects 16000 Hz audio, the clips are 8000 Hz"):
        measure_latency(_tuned_model(), _clips(0.1), 8000)


def test_something_not_callable_is_named():
    with pytest.raises(ValueError, match="neither callable"):
        measure_latency(object(), _clips(0.1), RATE)


def test_model_bytes_sums_every_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x" * 1000)
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "sub" / "extra.bin").write_bytes(b"y" * 24)
    assert model_bytes(tmp_path) == 1000 + 2 + 24
    with pytest.raises(ValueError, match="is not a folder"):
        model_bytes(tmp_path / "missing")


def test_count_parameters_splits_trainable_and_counts_shared_once():
    linear = torch.nn.Linear(3, 2)       # 8 parameters
    frozen = torch.nn.Linear(2, 2)       # 6 parameters
    frozen.requires_grad_(False)
    shared = torch.nn.Sequential(linear, frozen, linear)
    assert count_parameters(shared) == (8, 14)
    encoder = load_encoder("tiny-whisper")
    trainable, total = count_parameters(encoder)
    assert trainable == 0 and total == sum(p.numel() for p in encoder.parameters()) > 0
    encoder.truncate(1)
    assert count_parameters(encoder)[1] < total


def test_deployment_costs_count_the_cut_encoder_a_model_loads(tmp_path):
    """A head reading layer 1 ships one of tiny-whisper's three layers: fewer parameters and bytes than a
    head mixing every layer, each counted as the loaded model holds them."""
    from ser_tune.data import generate_synthetic, load_corpus, speaker_split
    from ser_tune.training.export import load_model
    from ser_tune.training.finetune import FineTuner, TrialData
    from ser_tune.training.latency import deployed_bytes, deployment_costs
    from ser_tune.training.settings import TrialSettings

    root = generate_synthetic(tmp_path / "corpus", seed=1, n_speakers=3, clips_per_cell=1, duration_range=(0.5, 0.6))
    table = load_corpus("synthetic", root).table
    data = TrialData.from_table(table, speaker_split(table, val_speakers=1, test_speakers=1, seed=0).assignment)
    costs = {}
    for layer in ("weighted", 1):
        tuner = FineTuner(TrialSettings(lr=1e-2, num_epochs=1, unfreeze="none", max_length=1.0, layer=layer), data,
                          encoder_spec="tiny-whisper", cache_root=tmp_path / "cache")
        folder = tuner.export(tuner.run(), tmp_path / str(layer))
        costs[layer] = deployment_costs(folder, _clips(0.5, 0.5), RATE, repeats=2, warmup=0)
        model = load_model(folder)
        encoder_bytes = sum(t.numel() * t.element_size() for t in model.encoder.state_dict().values())
        assert costs[layer]["model_bytes"] == deployed_bytes(model, folder) == model_bytes(folder) + encoder_bytes
        assert costs[layer]["total_params"] == count_parameters(model.encoder)[1] + count_parameters(model.head)[1]
        assert costs[layer]["latency_min_ms_per_s"] <= costs[layer]["latency_ms_per_s"] > 0
        assert costs[layer]["latency_audio_seconds"] == 1.0
    assert costs[1]["total_params"] < costs["weighted"]["total_params"]
    assert costs[1]["model_bytes"] < costs["weighted"]["model_bytes"]
