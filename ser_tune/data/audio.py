"""Audio I/O: decode any wav to float32 mono at a target rate, check files, crop and batch waves."""
from __future__ import annotations

import hashlib
import math
import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from .errors import AudioError, DataError

if TYPE_CHECKING:   # annotations only: loading a corpus does not import torch
    import torch

SILENCE_PEAK = 1e-6   # a file whose peak |sample| stays below this is treated as silent
_BLOCK = 1 << 16      # frames read at a time when scanning a file's samples
SAMPLE_RATE = 16000  # every supported encoder family consumes 16 kHz audio
MIN_DURATION = 0.25   # seconds; shorter clips carry too little speech to label (load_corpus's default)
# Audio formats the loaders do not read (libsndfile decodes some of them, but corpora and models
# are checked on 16-bit wav only): such files are listed as skipped, never silently ignored.
UNREAD_FORMATS = (".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff", ".mp4", ".webm")
_UNKNOWN_DATA_LENGTH = (0, 0xFFFFFFFF)   # data-chunk sizes that streaming writers leave unset


def _soundfile_reason(err: Exception) -> str:
    # soundfile's message repeats the path; keep only libsndfile's own words.
    detail = getattr(err, "error_string", None) or str(err)
    return f"unreadable audio (soundfile: {detail.strip() or type(err).__name__})"


def unread_format_reason(path: str | Path) -> str | None:
    """Why a file of an audio format the loaders do not read is skipped; None for any other file."""
    suffix = Path(path).suffix.lower()
    if suffix in UNREAD_FORMATS:
        return f"audio format {suffix} is not read; convert to 16-bit .wav"
    return None


def wav_truncation(path: str | Path) -> str | None:
    """The reason a RIFF/WAVE file is truncated (its data chunk declares more bytes than follow), else None.

    libsndfile silently shortens such a file to what it holds, so the header is read here, only as
    far as the data chunk. Anything that does not parse as plain RIFF/WAVE (RF64, a chunk running
    past the end before the data chunk) is left to soundfile.
    """
    path = Path(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, length = struct.unpack("<4sI", f.read(8))
            offset += 8
            if chunk_id == b"data":
                held = size - offset
                if length in _UNKNOWN_DATA_LENGTH or length <= held:
                    return None
                return f"truncated: the header declares {length} bytes of audio, the file holds {held}"
            offset += length + (length & 1)   # chunks are word-aligned: odd lengths carry a pad byte
    return None


def content_hash(path: str | Path) -> str:
    """A digest of the file's bytes: identical files under different paths share it."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _header_checks(path: Path) -> None:
    """What is wrong with a file before decoding it: missing, unread format, empty, truncated."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise AudioError(path, "file not found") from None
    except OSError as err:
        raise AudioError(path, f"cannot read file ({err.strerror or err})") from None
    reason = unread_format_reason(path)
    if reason is None and size == 0:
        reason = "empty file (0 bytes)"
    if reason is None:
        try:
            reason = wav_truncation(path)
        except OSError as err:
            reason = f"cannot read file ({err.strerror or err})"
    if reason is not None:
        raise AudioError(path, reason)


def _scan_peak(path: Path) -> float:
    """Stream the samples block-wise: the peak |sample|, AudioError on non-finite or undecodable audio."""
    peak = 0.0
    try:
        for block in sf.blocks(str(path), blocksize=_BLOCK, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                raise AudioError(path, "non-finite samples (NaN or inf)")
            if block.size:
                peak = max(peak, float(np.abs(block).max()))
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(path, _soundfile_reason(err)) from None
    return peak


def audio_info(path: str | Path, *, scan_samples: bool = True, min_duration: float = 0.0) -> tuple[float, int]:
    """(duration in s, sample rate) of a usable audio file, else AudioError naming why not.

    The header is always read (unread formats, empty, truncated, unreadable, zero-length files
    and clips shorter than min_duration seconds are refused); with scan_samples the samples are
    streamed block-wise to catch silent (peak < SILENCE_PEAK) and non-finite (NaN/inf) audio
    without holding the whole file.
    """
    path = Path(path)
    _header_checks(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioError(path, _soundfile_reason(err)) from None
    if info.frames <= 0:
        raise AudioError(path, "zero-length audio (0 frames)")
    if info.samplerate <= 0:
        raise AudioError(path, f"invalid sample rate {info.samplerate}")
    duration = info.frames / info.samplerate
    if duration < min_duration:
        raise AudioError(path, f"too short: {duration:.3f} s, the minimum is {min_duration:g} s (min_duration)")
    if scan_samples:
        peak = _scan_peak(path)
        if peak < SILENCE_PEAK:
            raise AudioError(path, f"silent audio (peak {peak:.1e} < {SILENCE_PEAK:.0e})")
    return duration, int(info.samplerate)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling by the reduced rational ratio target_sr / orig_sr."""
    if orig_sr == target_sr:
        return wave
    g = math.gcd(int(orig_sr), int(target_sr))
    from scipy.signal import resample_poly   # late: 1 CPU-second of import that trials on cached features skip

    return resample_poly(wave, int(target_sr) // g, int(orig_sr) // g).astype(np.float32, copy=False)


def decoded_length(path: str | Path, target_sr: int, max_seconds: float | None = None) -> int:
    """Samples that ``crop(load_audio(path, target_sr), max_seconds, target_sr)`` gives, from the file's
    header alone (resample_poly returns ceil(frames x up / down) samples); soundfile's errors pass."""
    info = sf.info(str(path))
    length = int(info.frames)
    if int(info.samplerate) != int(target_sr):
        g = math.gcd(int(info.samplerate), int(target_sr))
        length = -(-length * (int(target_sr) // g) // (int(info.samplerate) // g))
    if max_seconds is not None:
        length = min(length, max(1, int(round(max_seconds * target_sr))))
    return length


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
