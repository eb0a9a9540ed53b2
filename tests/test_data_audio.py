"""Decoding, resampling, checking, caching, cropping and batching audio."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from ser_tune.data import AudioError, AudioStore, DataError, audio_info, crop, load_audio, pad_batch
from ser_tune.data import audio as audio_module
from fixtures_corpora import write_bad_files, write_wav

BAD = {"garbage": "garbage.wav", "empty": "empty.wav", "zero_length": "zero.wav",
       "silent": "silent.wav", "nan": "nan.wav"}
REASONS = {"garbage": "unreadable audio", "empty": "empty file (0 bytes)", "zero_length": "zero-length audio",
           "silent": "silent audio", "nan": "non-finite samples"}


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
def test_load_audio_resamples_to_target_rate(tmp_path, sr):
    path = write_wav(tmp_path / "a.wav", sr=sr, seconds=0.5, freq=440)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 8000) <= 1
    # The tone survives: its spectral peak stays at 440 Hz.
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 5


def test_load_audio_mixes_stereo_to_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    t = np.arange(1600) / 16000
    left = 0.4 * np.sin(2 * np.pi * 300 * t)
    sf.write(str(path), np.stack([left, np.zeros_like(left)], axis=1), 16000, subtype="FLOAT")
    assert np.allclose(load_audio(path, 16000), left / 2, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, kind):
    path = write_bad_files(tmp_path, {kind: BAD[kind]})[kind]
    for check in (lambda: load_audio(path, 16000), lambda: audio_info(path)):
        with pytest.raises(AudioError) as info:
            check()
        err = info.value
        assert err.path == str(path) and REASONS[kind] in err.reason
        assert str(err) == f"{path}: {err.reason}"
        assert isinstance(err, DataError) and isinstance(err, ValueError)


def test_audio_error_pickles(tmp_path):
    err = pickle.loads(pickle.dumps(AudioError("/x.wav", "silent audio")))
    assert (err.path, err.reason, str(err)) == ("/x.wav", "silent audio", "/x.wav: silent audio")


def test_missing_file_and_bad_rate(tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        load_audio(tmp_path / "nope.wav", 16000)
    with pytest.raises(DataError, match="target_sr"):
        load_audio(write_wav(tmp_path / "a.wav"), 0)


def test_audio_info_scans_large_files_blockwise(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_module, "_BLOCK", 1000)
    path = tmp_path / "late_nan.wav"
    wave = np.full(5000, 0.1, dtype=np.float32)
    wave[4500] = np.nan
    sf.write(str(path), wave, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite"):
        audio_info(path)
    duration, sr = audio_info(path, scan_samples=False)
    assert (duration, sr) == (5000 / 16000, 16000)


def test_audio_store_decodes_each_file_once(tmp_path, monkeypatch):
    a, b = write_wav(tmp_path / "a.wav"), write_wav(tmp_path / "b.wav", freq=300)
    calls = []
    real = audio_module.load_audio
    monkeypatch.setattr(audio_module, "load_audio", lambda p, sr: calls.append(p) or real(p, sr))
    store = AudioStore(16000)
    first = store.get(a)
    assert store.get(str(a)) is first and store.get(tmp_path / "." / "a.wav") is first
    store.get(b)
    assert len(calls) == 2 and store.decodes == 2 and len(store) == 2
    with pytest.raises(ValueError):
        first[0] = 1.0     # cached waves are shared, hence read-only


def test_audio_store_lru_bound(tmp_path):
    paths = [write_wav(tmp_path / f"{i}.wav", freq=200 + 50 * i) for i in range(3)]
    store = AudioStore(16000, max_items=2)
    for p in paths:
        store.get(p)
    assert len(store) == 2 and paths[0] not in store and paths[2] in store


def test_crop():
    wave = np.arange(16000, dtype=np.float32)
    assert crop(wave, None, 16000) is wave
    assert len(crop(wave, 0.5, 16000)) == 8000 and crop(wave, 0.5, 16000)[0] == 0
    assert len(crop(wave, 3.0, 16000)) == 16000
    with pytest.raises(DataError, match="max_seconds"):
        crop(wave, 0, 16000)


def test_pad_batch():
    waves = [np.ones(3, dtype=np.float32), np.full(5, 2.0, dtype=np.float32), np.ones(1, dtype=np.float64)]
    batch, lengths = pad_batch(waves)
    assert batch.dtype == torch.float32 and batch.shape == (3, 5)
    assert lengths.dtype == torch.int64 and lengths.tolist() == [3, 5, 1]
    assert batch[0].tolist() == [1, 1, 1, 0, 0] and batch[2, 1:].abs().sum() == 0
    with pytest.raises(DataError):
        pad_batch([])
    with pytest.raises(DataError, match="not 1-D"):
        pad_batch([np.zeros((2, 2))])
