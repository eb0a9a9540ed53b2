"""Audio I/O: decode any wav to float32 mono at a target rate, check files, crop and batch waves."""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from .errors import AudioError, DataError

SILENCE_PEAK = 1e-6   # a file whose peak |sample| stays below this is treated as silent
_BLOCK = 1 << 16      # frames read at a time when scanning a file's samples
SAMPLE_RATE = 16000  # every supported encoder family consumes 16 kHz audio


def _soundfile_reason(err: Exception) -> str:
    # soundfile's message repeats the path; keep only libsndfile's own words.
    detail = getattr(err, "error_string", None) or str(err)
    return f"unreadable audio (soundfile: {detail.strip() or type(err).__name__})"


def audio_info(path: str | Path, *, scan_samples: bool = True) -> tuple[float, int]:
    """(duration in s, sample rate) of a usable audio file, else AudioError naming why not.

    The header is always read; with scan_samples the samples are streamed block-wise to catch
    silent (peak < SILENCE_PEAK) and non-finite (NaN/inf) audio without holding the whole file.
    """
    path = Path(path)
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise AudioError(path, f"cannot read file ({err.strerror or err})") from None
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(path, _soundfile_reason(err)) from None
    if info.frames <= 0:
        raise AudioError(path, "zero-length audio (0 frames)")
    if info.samplerate <= 0:
        raise AudioError(path, f"invalid sample rate {info.samplerate}")
    if scan_samples:
        peak = 0.0
        try:
            for block in sf.blocks(str(path), blocksize=_BLOCK, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    raise AudioError(path, "non-finite samples (NaN or inf)")
                if block.size:
                    peak = max(peak, float(np.abs(block).max()))
        except (sf.SoundFileError, RuntimeError) as err:
            raise AudioError(path, _soundfile_reason(err)) from None
        if peak < SILENCE_PEAK:
            raise AudioError(path, f"silent audio (peak {peak:.1e} < {SILENCE_PEAK:.0e})")
    return info.frames / info.samplerate, int(info.samplerate)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the reduced rational ratio target_sr / orig_sr."""
    if orig_sr == target_sr:
        return wave
    g = math.gcd(int(orig_sr), int(target_sr))
    return resample_poly(wave, int(target_sr) // g, int(orig_sr) // g).astype(np.float32, copy=False)


def load_audio(path: str | Path, target_sr: int) -> np.ndarray:
    """Decode a file to float32 mono at target_sr; AudioError(path, reason) when it is not usable."""
    if not isinstance(target_sr, (int, np.integer)) or target_sr <= 0:
        raise DataError(f"target_sr: must be a positive integer, got {target_sr!r}")
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(path, _soundfile_reason(err)) from None
    if data.shape[0] == 0:
        raise AudioError(path, "zero-length audio (0 frames)")
    if not np.isfinite(data).all():
        raise AudioError(path, "non-finite samples (NaN or inf)")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        raise AudioError(path, f"silent audio (peak {peak:.1e} < {SILENCE_PEAK:.0e})")
    return np.ascontiguousarray(resample(wave, sr, int(target_sr)), dtype=np.float32)


class AudioStore:
    """Decodes each file once per process and keeps the waves (LRU-bounded when max_items is set)."""

    def __init__(self, target_sr: int, max_items: int | None = None):
        if max_items is not None and max_items < 1:
            raise DataError(f"max_items: must be >= 1 or None, got {max_items!r}")
        self.target_sr = int(target_sr)
        self.max_items = max_items
        self._waves: OrderedDict[str, np.ndarray] = OrderedDict()
        self.decodes = 0   # files decoded so far (tests and benchmarks read it)

    def get(self, path) -> np.ndarray:
        key = str(Path(path).resolve())
        wave = self._waves.get(key)
        if wave is not None:
            self._waves.move_to_end(key)
            return wave
        wave = load_audio(key, self.target_sr)
        wave.flags.writeable = False   # shared between callers: nobody may edit it in place
        self.decodes += 1
        self._waves[key] = wave
        if self.max_items is not None and len(self._waves) > self.max_items:
            self._waves.popitem(last=False)
        return wave

    def __len__(self) -> int:
        return len(self._waves)

    def __contains__(self, path) -> bool:
        return str(Path(path).resolve()) in self._waves


def crop(wave: np.ndarray, max_seconds: float | None, sample_rate: int) -> np.ndarray:
    """Keep the first max_seconds of a wave (None = all of it)."""
    if max_seconds is None:
        return wave
    if not max_seconds > 0:
        raise DataError(f"max_seconds: must be > 0 or None, got {max_seconds!r}")
    return wave[: max(1, int(round(max_seconds * sample_rate)))]


def pad_batch(waves: list[np.ndarray]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Zero-pad 1-D waves into a (B, S) float32 tensor; also return their lengths (B,) int64."""
    if len(waves) == 0:
        raise DataError("pad_batch: empty list of waves")
    lengths = [int(np.asarray(w).shape[0]) for w in waves]
    for i, w in enumerate(waves):
        if np.asarray(w).ndim != 1:
            raise DataError(f"pad_batch: wave {i} is not 1-D (shape {np.asarray(w).shape})")
    import torch   # late: the CLI and corpus loading do not need torch's import time

    batch = np.zeros((len(waves), max(lengths)), dtype=np.float32)
    for i, w in enumerate(waves):
        batch[i, : lengths[i]] = w
    return torch.from_numpy(batch), torch.tensor(lengths, dtype=torch.int64)
