"""The feature cache: frozen encoder layers' outputs, computed once per study and shared.

While encoder layers are frozen their outputs depend only on (clips, encoder weights,
max_length), not on the trial. One encoder pass stores, per clip:

- ``pooled``: the masked mean over frames of every hidden state, (N, L+1, D). Weighted layer
  sums and mean pooling are both linear, so they commute: a head on the learned weighted sum
  of mean-pooled layers equals one on the mean-pooled weighted sum. Head-only epochs therefore
  need nothing else and cost only the head.
- ``pooled_std``: the standard deviation over the same unpadded frames (population, ddof 0),
  (N, L+1, D): with the mean, the utterance-level statistics heads with ``pooling: meanstd`` read
  (how much a feature moves within an utterance carries emotion the mean averages away).
- ``frames`` at a layer boundary b (optional): the full (T_i, D) hidden state at index b, the
  input of the lowest layer a "top-k" trial trains (b = L - k), so such a trial runs only its top layers.
- ``layer_frames`` averaged over a frames in time (optional, a in FRAME_AVERAGES): every hidden state's
  frames of every clip, (T_i', L+1, D) per clip with T_i' = ceil(T_i / a), in float16, one array for the
  entry with a per-clip offset index: what heads that pool frames themselves read (``head: attentive``).
  Read memory-mapped, so every trial of a node shares one copy in the page cache. Only studies whose
  space can choose such a head ask for them (all 7 Whisper-base states of EmoDB: about 380 MB).

Entries live on disk under the study's storage (shared by every trial and node), under an
exclusive file lock so concurrent trials compute an entry once. An encode writes every file of the
entry into a staging folder inside it and renames them into place at the end, the files that mark
the entry complete (``frames_<b>.npy``, ``layer_frames_a<a>.npy``, ``meta.json``) last: a killed encode leaves at most a
staging folder (removed by the next encode) and files no reader looks at, never a half entry.

Who computes a miss is the cache's ``encode_clips``: by default this process, batch by batch; the
study's shared encode hands it ``distributed.RayShardedEncode``, which spreads the same batches
over a Ray cluster's CPUs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from filelock import FileLock
from tqdm import tqdm

from .base import SpeechEncoder
from .precision import compute, resolve


@dataclass
class CachedFeatures:
    pooled: np.ndarray                    # (N, L+1, D) float32: mean over each clip's frames
    lengths: np.ndarray                   # (N,) frames per clip
    pooled_std: np.ndarray | None = None  # (N, L+1, D) float32: standard deviation over the same frames
    frames: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # b -> (concat (sumT, D), offsets (N+1,))
    # a -> (every hidden state's frames averaged over a in time, concat (sumT_a, L+1, D) float16 memory-mapped,
    # offsets (N+1,))
    layer_frames: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def frames_of(self, boundary: int, index: int) -> np.ndarray:
        data, offsets = self.frames[boundary]
        return data[offsets[index]: offsets[index + 1]]

    def clip_frames(self, average: int, index: int) -> np.ndarray:
        """Clip ``index``'s frames of every hidden state, averaged over ``average`` frames: (T', L+1, D) float16."""
        data, offsets = self.layer_frames[average]
        return data[offsets[index]: offsets[index + 1]]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    encode_seconds: float = 0.0
    clips_encoded: int = 0


def effective_max_length(max_length: float | None, durations: Sequence[float]) -> float | None:
    """The crop that really applies: a max_length past the longest clip keeps whole clips, so
    e.g. 3 s and 10 s on a corpus of 2 s clips share one cache entry."""
    if max_length is None or not len(durations):
        return None
    return None if max_length >= max(durations) else float(max_length)


STAGING_PREFIX = ".partial-"   # an encode's staging folder inside its entry
FRAME_AVERAGES = (1, 2)        # frames averaged over this many in time before they are stored
FLOAT16_MAX = float(np.finfo(np.float16).max)


def average_frames(frames: np.ndarray, k: int) -> np.ndarray:
    """The mean of every ``k`` consecutive frames (T, ...) -> (ceil(T / k), ...); a last group of fewer
    frames is the mean of those."""
    if k == 1:
        return frames
    whole = len(frames) // k * k
    out = frames[:whole].reshape(len(frames) // k, k, *frames.shape[1:]).mean(1)
    if whole < len(frames):
        out = np.concatenate([out, frames[whole:].mean(0, keepdims=True)])
    return out


def layer_frames_of(states: Sequence[torch.Tensor], lengths: Sequence[int], average: int) -> list[np.ndarray]:
    """Each row's unpadded frames of every hidden state ([(B, T, D)] -> B arrays (T', L+1, D)), averaged
    over ``average`` frames in time, in float16 (a ValueError when a value is past float16's range)."""
    stacked = torch.stack(list(states), dim=2).numpy()
    out = []
    for row, n in enumerate(lengths):
        frames = average_frames(stacked[row, : int(n)], average)
        peak = float(np.abs(frames).max()) if frames.size else 0.0
        if not peak <= FLOAT16_MAX:
            raise ValueError(f"hidden states reach {peak:g}, past float16's range ({FLOAT16_MAX:g}): their frames "
                             "cannot be cached in float16")
        out.append(frames.astype(np.float16))
    return out


@dataclass
class EncodedClips:
    """What one encode computed for some clips of an entry: ``index`` holds their positions in it."""
    index: np.ndarray                               # (k,) int64
    lengths: np.ndarray                             # (k,) frames per clip
    pooled: np.ndarray | None                       # (k, L+1, D) float32; None: the entry already has it
    pooled_std: np.ndarray | None = None            # (k, L+1, D) float32, with ``pooled``
    frames: dict[int, list[np.ndarray]] = field(default_factory=dict)   # b -> k arrays (T_i, D)
    layer_frames: dict[int, list[np.ndarray]] = field(default_factory=dict)   # a -> k arrays (T_i', L+1, D) float16

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def join(cls, parts: Sequence["EncodedClips"], n: int) -> "EncodedClips":
        """The parts (any order) as the entry's ``n`` clips in order; each clip must come exactly once."""
        index = np.concatenate([p.index for p in parts]).astype(np.int64)
        if len(index) != n or not np.array_equal(np.sort(index), np.arange(n)):
            raise ValueError(f"encoded parts cover {len(np.unique(index))} distinct of {n} clips "
                             f"({len(index)} in all): every clip must be encoded exactly once")
        order = np.argsort(index, kind="stable")

        def rows(name: str):
            return np.concatenate([getattr(p, name) for p in parts])[order] if getattr(parts[0], name) is not None else None

        def per_clip(name: str) -> dict:
            joined = {key: [f for p in parts for f in getattr(p, name)[key]] for key in getattr(parts[0], name)}
            return {key: [clips[i] for i in order] for key, clips in joined.items()}

        return cls(index=np.arange(n, dtype=np.int64), lengths=rows("lengths"), pooled=rows("pooled"),
                   pooled_std=rows("pooled_std"), frames=per_clip("frames"), layer_frames=per_clip("layer_frames"))


class ClipWaves:
    """An entry's cropped waves, each decoded when first asked for and kept. ``length_hint(i)`` (optional)
    predicts clip i's length in samples from its file's header, so an encode can plan its batches before
    decoding every clip (:meth:`expected_lengths`); whoever uses the prediction checks it on the decoded wave."""

    def __init__(self, load_wave: Callable[[int], np.ndarray], count: int,
                 length_hint: Callable[[int], int] | None = None):
        self.load_wave = load_wave
        self.count = count
        self.length_hint = length_hint
        self.decoded: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.count:
            raise IndexError(i)
        if i not in self.decoded:
            self.decoded[i] = self.load_wave(i)
        return self.decoded[i]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(self.count))

    def expected_lengths(self) -> list[int] | None:
        """Every clip's predicted length, or None when there is no hint or a header cannot be read (the
        decode then says what is wrong with the file)."""
        if self.length_hint is None:
            return None
        try:
            return [int(self.length_hint(i)) for i in range(self.count)]
        except Exception:   # noqa: BLE001 - an unreadable header: decoding the clip reports it properly
            return None


class ClipEncode(Protocol):
    """How a cache miss is computed: the entry's cropped waves in, their features out (the frames at
    ``boundaries``, the pooled statistics when ``need_pooled``, every hidden state's frames averaged over
    each of ``averages``), the layers run in ``precision`` (the cache's: its entries' key says it);
    ``progress`` (a tqdm bar over the clips) is advanced as clips finish."""

    def __call__(self, waves: ClipWaves, boundaries: list[int], need_pooled: bool,
                 progress: tqdm, averages: Sequence[int] = (), *, precision: str) -> EncodedClips: ...


def encode_progress(total: int, label: str, *, enabled: bool = True) -> tqdm:
    """The encode's progress line on stderr: clips done of ``total``, clips per second, time left.
    Explicitly on sys.stderr: stdout may carry a --json object alone."""
    return tqdm(total=total, desc=label, unit="clip", file=sys.stderr, disable=not enabled,
                mininterval=1.0, dynamic_ncols=True)


class FeatureCache:
    """Encode-once store of frozen features under ``root``.

    ``encoder_loader`` is called only on a miss computed here, so a head-only trial with a warm cache
    never loads the encoder. ``encode_clips`` computes misses elsewhere (None: in this process, batch by
    batch); ``progress`` shows the encode's progress line on stderr.
    """

    def __init__(self, root: str | Path, encoder_spec: str, encoder_fingerprint: str,
                 encoder_loader: Callable[[], SpeechEncoder], *, batch_size: int = 16,
                 encode_clips: ClipEncode | None = None, progress: bool = False, precision: str = "auto"):
        self.root = Path(root)
        self.precision = resolve(precision)   # the encode's arithmetic, part of every entry's key
        self.encoder_spec = encoder_spec
        self.encoder_fingerprint = encoder_fingerprint
        self._loader = encoder_loader
        self._encoder: SpeechEncoder | None = None
        self.batch_size = batch_size
        self.encode_clips: ClipEncode = encode_clips or self.encode_here
        self.progress = progress
        self.stats = CacheStats()

    @property
    def encoder(self) -> SpeechEncoder:
        if self._encoder is None:
            self._encoder = self._loader()
        return self._encoder

    def remembered_description(self) -> dict | None:
        """The encoder's ``describe()`` as the first encode with these weights saved it (None: none did):
        a study whose features are all cached then never loads the encoder (seconds of CPU per launch)."""
        try:
            return json.loads((self.root / f"encoder-{self.encoder_fingerprint}.json").read_text())
        except (OSError, ValueError):
            return None

    def remember_description(self, description: dict) -> None:
        """Saved whole or not at all; a temporary file of its own (studies share the cache root), removed
        when the write fails (a full disk)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.root, suffix=".tmp", delete=False) as out:
            pass
        try:
            Path(out.name).write_text(json.dumps(description))
            os.replace(out.name, self.root / f"encoder-{self.encoder_fingerprint}.json")
        except BaseException:
            Path(out.name).unlink(missing_ok=True)
            raise

    def key(self, clip_ids: Sequence[str], max_length: float | None) -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.encoder_fingerprint}|{max_length}|v2".encode())   # v2: entries hold pooled_std
        if self.precision != "fp32":   # (fp32 entries keep the keys they had before precisions)
            digest.update(f"|{self.precision}".encode())
        for clip in clip_ids:
            digest.update(clip.encode())
            digest.update(b"\0")
        return digest.hexdigest()[:20]

    def get(self, clip_ids: Sequence[str], load_wave: Callable[[int], np.ndarray], max_length: float | None,
            boundaries: Sequence[int] = (), length_hint: Callable[[int], int] | None = None, *,
            averages: Sequence[int] = ()) -> CachedFeatures:
        """Features for the clips (in order); ``load_wave(i)`` gives clip i's cropped waveform and
        ``length_hint(i)`` (optional) its length from the file's header (see :class:`ClipWaves`);
        ``averages``: every hidden state's frames, averaged over each of these many frames in time."""
        folder = self.root / self.key(clip_ids, max_length)
        folder.mkdir(parents=True, exist_ok=True)
        wanted, stacks = sorted(set(int(b) for b in boundaries)), frame_averages(averages)
        if self._complete(folder, wanted, stacks):
            self.stats.hits += 1
            return self._load(folder, wanted, stacks)
        with FileLock(folder / ".lock"):  # exclusive across processes: concurrent trials encode an entry once
            if self._complete(folder, wanted, stacks):  # another trial finished it while we waited
                self.stats.hits += 1
            else:
                self.stats.misses += 1
                for stale in folder.glob(f"{STAGING_PREFIX}*"):   # left by a killed encode (we hold the lock)
                    shutil.rmtree(stale, ignore_errors=True)
                missing = [b for b in wanted if not (folder / f"frames_{b}.npy").exists()]
                meta = {"encoder": self.encoder_spec, "fingerprint": self.encoder_fingerprint,
                        "max_length": max_length, "clips": len(clip_ids), "precision": self.precision}
                self._encode(folder, ClipWaves(load_wave, len(clip_ids), length_hint), missing,
                             need_pooled=not (folder / "meta.json").exists(), meta=meta,
                             averages=[a for a in stacks if not (folder / f"layer_frames_a{a}.npy").exists()])
        return self._load(folder, wanted, stacks)

    def has(self, clip_ids: Sequence[str], max_length: float | None, boundaries: Sequence[int] = (), *,
            averages: Sequence[int] = ()) -> bool:
        """Whether the entry (with the frames at ``boundaries`` and every hidden state's frames averaged over
        each of ``averages``) is complete: a get would not encode."""
        return self._complete(self.root / self.key(clip_ids, max_length), [int(b) for b in boundaries],
                              frame_averages(averages))

    @staticmethod
    def _complete(folder: Path, boundaries: Sequence[int], averages: Sequence[int] = ()) -> bool:
        return ((folder / "meta.json").exists() and all((folder / f"frames_{b}.npy").exists() for b in boundaries)
                and all((folder / f"layer_frames_a{a}.npy").exists() for a in averages))

    def _load(self, folder: Path, boundaries: Sequence[int], averages: Sequence[int] = ()) -> CachedFeatures:
        feats = CachedFeatures(pooled=np.load(folder / "pooled.npy"), lengths=np.load(folder / "lengths.npy"),
                               pooled_std=np.load(folder / "pooled_std.npy"))
        for b in boundaries:
            feats.frames[b] = (np.load(folder / f"frames_{b}.npy", mmap_mode="r"),
                               np.load(folder / f"offsets_{b}.npy"))
        for a in averages:   # memory-mapped: the trials of a node share one copy in the page cache
            feats.layer_frames[a] = (np.load(folder / f"layer_frames_a{a}.npy", mmap_mode="r"),
                                     np.load(folder / f"layer_offsets_a{a}.npy"))
        return feats

    def _encode(self, folder: Path, waves: ClipWaves, boundaries: list[int], need_pooled: bool,
                meta: dict, averages: Sequence[int] = ()) -> None:
        start = time.perf_counter()
        label = f"encode {meta['clips']} clips (max_length {meta['max_length']})"
        with encode_progress(len(waves), label, enabled=self.progress) as progress:
            encoded = self.encode_clips(waves, boundaries, need_pooled, progress, averages=list(averages),
                                        precision=self.precision)
        write_entry(folder, encoded, {**meta, "created": time.time()})
        self.stats.encode_seconds += time.perf_counter() - start
        self.stats.clips_encoded += len(waves)

    def encode_here(self, waves: Sequence[np.ndarray], boundaries: list[int], need_pooled: bool,
                    progress: tqdm, averages: Sequence[int] = (), *, precision: str) -> EncodedClips:
        """The default ``encode_clips``: every batch in this process with the cache's encoder."""
        parts = []
        for part in encode_batches(self.encoder, waves, equal_length_batches(waves, self.batch_size),
                                   boundaries, need_pooled, averages, precision):
            parts.append(part)
            progress.update(len(part))
        return EncodedClips.join(parts, len(waves))


def frame_averages(averages: Sequence[int]) -> list[int]:
    """``averages`` checked against FRAME_AVERAGES, sorted, each once."""
    wanted = sorted(set(int(a) for a in averages))
    if set(wanted) - set(FRAME_AVERAGES):
        raise ValueError(f"frames are averaged over one of {FRAME_AVERAGES} frames (asked for {wanted})")
    return wanted


@torch.no_grad()
def encode_batches(encoder: SpeechEncoder, waves: Sequence[np.ndarray], batches: Sequence[Sequence[int]],
                   boundaries: Sequence[int], need_pooled: bool, averages: Sequence[int] = (),
                   precision: str = "fp32") -> Iterator[EncodedClips]:
    """Each batch's features (``index``: positions in ``waves``): every hidden state's mean and standard
    deviation over its unpadded frames when ``need_pooled``, the frames at each boundary, and every hidden
    state's frames averaged over each of ``averages`` (float16). A clip's features depend only on the
    clips of its batch, so the same batches give the same bits wherever they run. The layers run in
    ``precision`` (see :mod:`.precision`); what they give is kept in float32."""
    encoder.eval()
    deepest = encoder.num_layers if (need_pooled or averages) else max(boundaries)
    for batch in batches:
        x = torch.from_numpy(np.stack([waves[i] for i in batch]))
        lens = torch.full((len(batch),), x.shape[1], dtype=torch.long)
        with compute(precision):
            hidden, mask = encoder.embed(x, lens)
            states = [hidden, *encoder.run_layers(hidden, mask, 0, deepest)]
        states = [state.float() for state in states]
        lengths = mask.sum(1).numpy().astype(np.int64)
        pooled = pooled_std = None
        if need_pooled:
            stats = [masked_mean_std(h, mask) for h in states]
            pooled = torch.stack([m for m, _ in stats], dim=1).numpy().astype(np.float32, copy=False)
            pooled_std = torch.stack([s for _, s in stats], dim=1).numpy().astype(np.float32, copy=False)
        frames = {b: [states[b][row, : lengths[row]].numpy().astype(np.float32) for row in range(len(batch))]
                  for b in boundaries}
        yield EncodedClips(index=np.asarray(batch, dtype=np.int64), lengths=lengths, pooled=pooled,
                           pooled_std=pooled_std, frames=frames,
                           layer_frames={a: layer_frames_of(states, lengths, a) for a in averages})


def masked_mean_std(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (ddof 0) over each row's unpadded frames: (B, T, D), (B, T) bool ->
    two (B, D). Centred before squaring: E[x^2] - E[x]^2 loses the small spread of large features."""
    m = mask[..., None].to(hidden.dtype)
    counts = m.sum(1).clamp(min=1.0)
    mean = (hidden * m).sum(1) / counts
    var = (((hidden - mean[:, None]) * m) ** 2).sum(1) / counts
    return mean, var.sqrt()


def write_entry(folder: Path, encoded: EncodedClips, meta: dict) -> None:
    """Write an encode's files into a staging folder inside ``folder``, then rename them into place:
    the data first, then what marks the entry complete (``frames_<b>.npy``, ``layer_frames_a<a>.npy``,
    then ``meta.json``)."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    try:
        order = []
        if encoded.pooled is not None:
            order += save_arrays(staging, pooled=encoded.pooled, pooled_std=encoded.pooled_std,
                                 lengths=encoded.lengths)
        concatenated = {**{(f"frames_{b}", f"offsets_{b}"): per_clip for b, per_clip in encoded.frames.items()},
                        **{(f"layer_frames_a{a}", f"layer_offsets_a{a}"): per_clip
                           for a, per_clip in encoded.layer_frames.items()}}
        for (_, offsets), per_clip in concatenated.items():
            starts = np.concatenate([[0], np.cumsum([f.shape[0] for f in per_clip])]).astype(np.int64)
            order += save_arrays(staging, **{offsets: starts})
        for (data, _), per_clip in concatenated.items():
            order += save_arrays(staging, **{data: np.concatenate(per_clip, axis=0)})
        (staging / "meta.json").write_text(json.dumps(meta))
        for name in [*order, "meta.json"]:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_arrays(folder: Path, **arrays: np.ndarray) -> list[str]:
    names = []
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
        names.append(f"{name}.npy")
    return names


def equal_length_batches(waves: Sequence[np.ndarray], batch_size: int) -> list[list[int]]:
    """Batch only clips of identical length: no padding enters the encoder, so a clip's cached
    features do not depend on which clips shared its batch (wav2vec2-base's group norm would see padding)."""
    return batches_by_length([len(w) for w in waves], batch_size)


def batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """:func:`equal_length_batches` from the clips' lengths alone."""
    by_length: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        by_length.setdefault(int(length), []).append(i)
    batches = []
    for _, idx in sorted(by_length.items()):
        for s in range(0, len(idx), batch_size):
            batches.append(idx[s: s + batch_size])
    return batches
