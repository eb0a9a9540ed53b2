"""The synthetic stand-in corpus: emotional "speech" generated from a seed, written in EmoDB naming.

Each clip is a source-filter voice: a glottal-pulse source at a speaker's own base F0 through
vowel-like formant resonances scaled by the speaker's vocal-tract length (speaker timbre),
gated into syllables. Emotion lives in prosody and voice quality -- pitch level, range and
contour, speaking rate, energy, jitter/shimmer, spectral tilt and breathiness -- scaled by the
speaker's expressiveness and the clip's intensity, with per-clip random variation so that
telling emotions apart across unseen speakers is learnable but not trivial.

Speaker ids start at 21 (EmoDB's are 03-16) so a synthetic clip is never mistaken for a real one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from filelock import FileLock

from .corpora import emodb
from .corpora.common import Scan, wav_files
from .errors import CorpusError, DataError
from .labels import EMOTIONS

GENERATOR = "ser_tune.synthetic/1"
PARAMS_FILE = "synthetic.json"
LABELS_FILE = "labels.csv"
FIRST_SPEAKER = 21
LETTER = {"anger": "W", "boredom": "L", "disgust": "E", "fear": "A",
          "happiness": "F", "neutral": "N", "sadness": "T"}
TEXTS = ("a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10")   # EmoDB's ten texts
INTENSITY_SCALE = {"normal": 1.1, "strong": 1.4}   # how far a clip departs from neutral

# Male reference formants (Hz) of five vowels; a speaker scales them by its vocal-tract factor.
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240],
                   [530, 1840, 2480], [570, 840, 2410]], dtype=float)
BANDWIDTHS = np.array([90.0, 110.0, 170.0])


@dataclass(frozen=True)
class Profile:
    """How one emotion is voiced, relative to the speaker's neutral voice."""

    f0: float          # pitch level, multiple of the speaker's base F0
    f0_range: float    # pitch excursion over the utterance, semitones
    contour: str       # "fall" | "rise" | "flat" | "hump"
    rate: float        # syllables per second
    energy_db: float   # level relative to neutral
    jitter: float      # relative period-to-period F0 perturbation
    shimmer: float     # relative period-to-period amplitude perturbation
    tilt: float        # one-pole low-pass coefficient on the source: higher = steeper spectral tilt
    open_q: float      # glottal open quotient: higher = breathier, softer pulses
    breath: float      # aspiration noise relative to the voiced source
    tremor: float      # slow pitch tremor depth, semitones
    avd: tuple[float, float, float]   # arousal, valence, dominance on the 1-5 scale


PROFILES = {
    "neutral":   Profile(1.00, 3.0, "fall", 4.4, 0.0, .006, .03, .78, .52, .05, 0.0, (3.0, 3.0, 3.0)),
    "anger":     Profile(1.30, 7.0, "fall", 5.4, 9.0, .010, .05, .42, .34, .02, 0.0, (4.4, 1.6, 4.2)),
    "happiness": Profile(1.30, 10.0, "rise", 4.8, 3.0, .008, .04, .70, .50, .08, 0.0, (3.9, 4.4, 3.5)),
    "fear":      Profile(1.65, 5.0, "hump", 6.8, 0.0, .030, .08, .80, .65, .25, 1.2, (4.1, 1.8, 1.7)),
    "sadness":   Profile(0.86, 2.0, "fall", 2.6, -9.0, .012, .05, .92, .72, .30, 0.3, (1.8, 1.6, 2.0)),
    "boredom":   Profile(0.92, 0.8, "flat", 3.2, -4.0, .006, .03, .88, .64, .08, 0.0, (1.7, 2.6, 2.6)),
    "disgust":   Profile(0.84, 5.0, "hump", 3.0, 1.0, .050, .15, .60, .42, .04, 0.0, (3.0, 1.8, 3.4)),
}
_NUMERIC = ("f0", "f0_range", "rate", "energy_db", "jitter", "shimmer", "tilt", "open_q", "breath", "tremor")


@dataclass(frozen=True)
class Speaker:
    number: int
    gender: str
    f0: float            # base F0, Hz
    tract: float         # formant scale (shorter vocal tract -> higher formants)
    expressiveness: float
    level_db: float
    rate: float
    tilt: float
    breath: float
    avd_offset: tuple[float, float, float]


def _speakers(seed: int, n: int) -> list[Speaker]:
    rng = np.random.default_rng([seed, 0])
    out = []
    for i in range(n):
        gender = "f" if i % 2 == 0 else "m"          # half female (the extra one when n is odd)
        female = gender == "f"
        out.append(Speaker(
            number=FIRST_SPEAKER + i, gender=gender,
            f0=float(rng.normal(205, 18) if female else rng.normal(115, 12)),
            tract=float(rng.normal(1.16, 0.04) if female else rng.normal(1.0, 0.04)),
            expressiveness=float(rng.uniform(0.9, 1.1)), level_db=float(rng.normal(0, 1.5)),
            rate=float(rng.uniform(0.88, 1.12)), tilt=float(rng.normal(0, 0.04)),
            breath=float(rng.uniform(0.0, 0.06)), avd_offset=tuple(float(x) for x in rng.normal(0, 0.2, 3))))
    return out


def _clip_profile(emotion: str, speaker: Speaker, intensity: str, rng: np.random.Generator) -> dict:
    """Emotion profile departing from neutral by speaker expressiveness x intensity, plus clip noise."""
    base, target = PROFILES["neutral"], PROFILES[emotion]
    scale = speaker.expressiveness * INTENSITY_SCALE[intensity]
    p = {k: getattr(base, k) + scale * (getattr(target, k) - getattr(base, k)) for k in _NUMERIC}
    p["f0"] *= float(np.exp(rng.normal(0, 0.05)))
    p["f0_range"] *= float(rng.uniform(0.75, 1.25))
    p["rate"] *= speaker.rate * float(np.exp(rng.normal(0, 0.08)))
    p["energy_db"] += float(rng.normal(0, 1.5))
    p["jitter"] *= float(rng.uniform(0.6, 1.4))
    p["shimmer"] *= float(rng.uniform(0.6, 1.4))
    p["tilt"] = float(np.clip(p["tilt"] + speaker.tilt + rng.normal(0, 0.025), 0.3, 0.97))
    p["open_q"] = float(np.clip(p["open_q"] + rng.normal(0, 0.03), 0.3, 0.8))
    p["breath"] = max(0.0, p["breath"] * float(rng.uniform(0.6, 1.4)) + speaker.breath)
    # The contour is the emotion's usual one, but not always.
    contours = ("fall", "rise", "flat", "hump")
    p["contour"] = target.contour if rng.random() > 0.1 else contours[rng.integers(len(contours))]
    return p


def _contour(shape: str, t: np.ndarray) -> np.ndarray:
    """Pitch movement in units of the range over normalised time t in [0, 1]."""
    if shape == "fall":
        return 0.5 - t
    if shape == "rise":
        return t - 0.5
    if shape == "hump":
        return np.sin(np.pi * t) - 0.5
    return np.zeros_like(t)


def _held_noise(rng, n: int, rate_hz: float, sr: int) -> np.ndarray:
    """Unit noise held piecewise-constant at rate_hz (period-to-period perturbations)."""
    hold = max(1, int(sr / rate_hz))
    return np.repeat(rng.standard_normal(n // hold + 1), hold)[:n]


def _resonator(freq: float, bw: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bw / sr)
    a = np.array([1.0, -2 * r * np.cos(2 * np.pi * freq / sr), r * r])
    return np.array([a.sum()]), a    # unit gain at DC keeps levels comparable across vowels


def _synthesise(p: dict, speaker: Speaker, text: str, duration: float, sr: int,
                rng: np.random.Generator) -> np.ndarray:
    # The steps draw from ``rng`` in this order: changing it changes every generated corpus.
    n = int(round(duration * sr))
    t = np.arange(n) / sr
    plan = _syllable_plan(p, text, duration, rng)
    phase, f0 = _pitch(p, speaker, plan, t, n, sr, rng)
    source = _glottal_source(p, speaker, phase, f0, n, sr, rng)
    out = _syllables(source, plan, speaker, n, sr, rng)
    return _leveled(out, p, speaker, n, rng)


def _syllable_plan(p: dict, text: str, duration: float, rng: np.random.Generator) -> dict:
    """The text fixes the vowel sequence and relative lengths; the clip fills its duration with
    syllables at the emotion's rate (cycling the text), after a short lead-in."""
    text_rng = np.random.default_rng(TEXTS.index(text) if text in TEXTS else 0)
    vowels = text_rng.integers(len(VOWELS), size=8)
    rel = text_rng.uniform(0.7, 1.3, size=8)
    stressed = set(text_rng.choice(8, size=2, replace=False).tolist())
    lead = rng.uniform(0.04, 0.12)
    onsets, lengths, idx = [], [], []
    at, k = lead, 0
    while True:
        length = rel[k % 8] / p["rate"] * rng.uniform(0.85, 1.15)
        if at + 0.6 * length > duration - 0.03:
            break
        onsets.append(at), lengths.append(length), idx.append(k % 8)
        at += length
        k += 1
    if not onsets:   # a very short clip still gets one syllable
        onsets, lengths, idx = [lead], [duration - lead - 0.03], [0]
    return {"vowels": vowels, "stressed": stressed, "lead": lead, "onsets": onsets, "lengths": lengths, "idx": idx}


def _pitch(p: dict, speaker: Speaker, plan: dict, t: np.ndarray, n: int, sr: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Glottal phase and f0: level x contour x stress bumps x tremor x slow drift x jitter."""
    onsets, lengths, lead = plan["onsets"], plan["lengths"], plan["lead"]
    end = onsets[-1] + lengths[-1]
    u = np.clip((t - lead) / max(end - lead, 1e-3), 0, 1)
    semitones = p["f0_range"] * _contour(p["contour"], u)
    for on, ln, i in zip(onsets, lengths, plan["idx"]):
        if i in plan["stressed"]:
            semitones += 0.35 * p["f0_range"] * np.exp(-0.5 * ((t - on - 0.4 * ln) / (0.25 * ln)) ** 2)
    semitones += p["tremor"] * np.sin(2 * np.pi * rng.uniform(5, 7) * t + rng.uniform(0, 2 * np.pi))
    semitones += 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * np.pi))
    f0 = speaker.f0 * p["f0"] * 2 ** (semitones / 12)
    f0 *= 1 + p["jitter"] * _held_noise(rng, n, speaker.f0 * p["f0"], sr)
    return np.cumsum(f0 / sr) % 1.0, f0


def _glottal_source(p: dict, speaker: Speaker, phase: np.ndarray, f0: np.ndarray, n: int, sr: int, rng) -> np.ndarray:
    """Derivative of a raised-sine glottal flow, low-passed for tilt, plus aspiration noise."""
    from scipy.signal import lfilter   # late: 1 CPU-second of import that every trial worker would pay

    oq = p["open_q"]
    flow = np.where(phase < oq, np.sin(np.pi * phase / oq) ** 2, 0.0)
    source = np.diff(flow, prepend=0.0) * sr / (speaker.f0 * 4)
    source = lfilter([1 - p["tilt"]], [1, -p["tilt"]], source) * 8   # higher pole = duller voice
    source *= 1 + p["shimmer"] * _held_noise(rng, n, speaker.f0 * p["f0"], sr)
    aspiration = np.diff(rng.standard_normal(n), prepend=0.0) * (0.4 + 0.6 * (phase < oq))
    return source + p["breath"] * aspiration


def _syllables(source: np.ndarray, plan: dict, speaker: Speaker, n: int, sr: int, rng) -> np.ndarray:
    """Gate the source, shape each syllable through its vowel's formants, add a consonant burst."""
    from scipy.signal import lfilter

    out = np.zeros(n)
    for on, ln, i in zip(plan["onsets"], plan["lengths"], plan["idx"]):
        a, b = int(on * sr), min(n, int((on + ln) * sr))
        if b - a < 8:
            continue
        # Voiced nucleus over ~80% of the slot, then a short gap: the syllable rhythm is audible.
        voiced = int((b - a) * rng.uniform(0.72, 0.88))
        env = np.zeros(b - a)
        env[:voiced] = np.sin(np.pi * np.linspace(0, 1, voiced)) ** 0.6 * (1.25 if i in plan["stressed"] else 1.0)
        seg = source[a:b] * env
        formants = VOWELS[plan["vowels"][i]] * speaker.tract * rng.uniform(0.95, 1.05, 3)
        for f, bw in zip(formants, BANDWIDTHS):
            bb, aa = _resonator(min(f, 0.45 * sr), bw, sr)
            seg = lfilter(bb, aa, seg)
        burst = min(b - a, int(rng.uniform(0.015, 0.035) * sr))
        seg[:burst] += 0.15 * np.diff(rng.standard_normal(burst), prepend=0.0) * np.hanning(burst)
        out[a:b] += seg
    return out


def _leveled(out: np.ndarray, p: dict, speaker: Speaker, n: int, rng) -> np.ndarray:
    """Target RMS over the voiced part, then a faint noise floor so pauses are not digital zero."""
    voiced = np.abs(out) > 0
    rms = np.sqrt(np.mean(out[voiced] ** 2)) if voiced.any() else 1.0
    level_db = -24 + p["energy_db"] + speaker.level_db
    out *= 10 ** (level_db / 20) / max(rms, 1e-9)
    out += 10 ** (rng.uniform(-66, -58) / 20) * rng.standard_normal(n)
    peak = np.abs(out).max()
    if peak > 0.98:   # keep loud clips unclipped (rare; they stay the loudest)
        out *= 0.98 / peak
    return out.astype(np.float32)


def _avd(emotion: str, intensity: str, speaker: Speaker, rng) -> tuple[float, float, float]:
    scale = INTENSITY_SCALE[intensity]
    values = []
    for centre, offset in zip(PROFILES[emotion].avd, speaker.avd_offset):
        v = 3.0 + scale * (centre - 3.0) + offset + rng.normal(0, 0.25)
        values.append(round(float(np.clip(v, 1.0, 5.0)), 2))
    return tuple(values)


def _params(seed, n_speakers, clips_per_cell, sample_rate, duration_range) -> dict:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed: must be a non-negative integer, got {seed!r}")
    if not isinstance(n_speakers, (int, np.integer)) or not 1 <= n_speakers <= 99 - FIRST_SPEAKER + 1:
        raise DataError(f"n_speakers: must be an integer in 1..{99 - FIRST_SPEAKER + 1}, got {n_speakers!r}")
    if not isinstance(clips_per_cell, (int, np.integer)) or not 1 <= clips_per_cell <= 26 * len(TEXTS):
        raise DataError(f"clips_per_cell: must be an integer in 1..{26 * len(TEXTS)}, got {clips_per_cell!r}")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate < 8000:
        raise DataError(f"sample_rate: must be an integer >= 8000, got {sample_rate!r}")
    try:
        lo, hi = (float(x) for x in duration_range)
    except (TypeError, ValueError):
        raise DataError(f"duration_range: must be (min, max) seconds, got {duration_range!r}") from None
    if not 0.3 <= lo <= hi:
        raise DataError(f"duration_range: need 0.3 <= min <= max, got {duration_range!r}")
    return {"generator": GENERATOR, "seed": int(seed), "n_speakers": int(n_speakers),
            "clips_per_cell": int(clips_per_cell), "sample_rate": int(sample_rate),
            "duration_range": [lo, hi]}


def _stored_params(root: Path) -> dict | None:
    file = root / PARAMS_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CorpusError(f"{file}: unreadable synthetic-corpus parameters ({err})") from None


def _write(root: Path, params: dict) -> None:
    seed, sr = params["seed"], params["sample_rate"]
    lo, hi = params["duration_range"]
    rows = []
    for speaker in _speakers(seed, params["n_speakers"]):
        for e, emotion in enumerate(EMOTIONS):
            for j in range(params["clips_per_cell"]):
                # One generator per clip, keyed by (seed, speaker, emotion, clip): order-independent.
                rng = np.random.default_rng([seed, speaker.number, e, j])
                text = TEXTS[(j + speaker.number + e) % len(TEXTS)]
                version = chr(ord("a") + j // len(TEXTS))
                intensity = "strong" if rng.random() < 0.5 else "normal"
                profile = _clip_profile(emotion, speaker, intensity, rng)
                duration = float(rng.uniform(lo, hi))
                wave = _synthesise(profile, speaker, text, duration, sr, rng)
                name = f"{speaker.number:02d}{text}{LETTER[emotion]}{version}.wav"
                sf.write(str(root / name), wave, sr, subtype="PCM_16")
                arousal, valence, dominance = _avd(emotion, intensity, speaker, rng)
                rows.append({"filename": name, "speaker": f"{speaker.number:02d}", "gender": speaker.gender,
                             "emotion": emotion, "intensity": intensity, "arousal": arousal,
                             "valence": valence, "dominance": dominance})
    pd.DataFrame(rows).to_csv(root / LABELS_FILE, index=False)
    # Written last: its presence marks a complete corpus.
    (root / PARAMS_FILE).write_text(json.dumps({**params, "files": len(rows)}, indent=2) + "\n")


def generate_synthetic(root: str | Path, *, seed: int = 0, n_speakers: int = 8, clips_per_cell: int = 4,
                       sample_rate: int = 16000, duration_range=(1.0, 2.0)) -> Path:
    """Write the synthetic corpus into root (created if needed) and return root.

    Idempotent: a folder already holding the same corpus is left as is; a folder holding other
    wav files is refused rather than mixed with them.
    """
    root = Path(root).expanduser().resolve()
    params = _params(seed, n_speakers, clips_per_cell, sample_rate, duration_range)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / ".synthetic.lock"):  # Ray trials may load (and so generate) the same folder at once
        stored = _stored_params(root)
        if stored is not None:
            _check_same(root, stored, params)
            return root
        if wav_files(root):
            raise CorpusError(f"{root}: folder already holds .wav files that are not a generated "
                              f"synthetic corpus (no {PARAMS_FILE}); use an empty folder")
        _write(root, params)
    return root


def _check_same(root: Path, stored: dict, asked: dict) -> None:
    for key, value in asked.items():
        if stored.get(key) != value:
            raise CorpusError(f"{root / PARAMS_FILE}: this folder holds a synthetic corpus with "
                              f"{key}={stored.get(key)!r}, not {value!r}; use another folder")


def scan(root: Path, view: str | None, **options) -> Scan:
    """The generated corpus's clips (generated first in a new folder) with their generated gender,
    intensity and dimensions; ``options`` are generate_synthetic's and must match a folder's own."""
    allowed = {"seed", "n_speakers", "clips_per_cell", "sample_rate", "duration_range"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DataError(f"options: unknown synthetic-corpus option '{unknown[0]}' "
                        f"(known: {', '.join(sorted(allowed))})")
    if root.exists() and not root.is_dir():
        raise CorpusError(f"{root}: not a folder (expected the synthetic corpus folder)")
    stored = _stored_params(root) if root.is_dir() else None
    if stored is None:
        generate_synthetic(root, **options)
        stored = _stored_params(root)
    elif options:
        defaults = _params(**{"seed": 0, "n_speakers": 8, "clips_per_cell": 4, "sample_rate": 16000,
                              "duration_range": (1.0, 2.0), **options})
        _check_same(root, stored, {k: defaults[k] for k in options})

    found = emodb.scan(root, view, title="synthetic corpus")
    labels_file = root / LABELS_FILE
    try:
        extra = pd.read_csv(labels_file, dtype={"filename": str, "speaker": str, "gender": str,
                                                "intensity": str})
    except (OSError, ValueError) as err:
        raise CorpusError(f"{labels_file}: cannot read synthetic labels ({err})") from None
    needed = ["filename", "gender", "intensity", "arousal", "valence", "dominance"]
    missing = [c for c in needed if c not in extra.columns]
    if missing:
        raise CorpusError(f"{labels_file}: missing column '{missing[0]}'")
    generated = extra[needed].set_index("filename").to_dict("index")
    for record in found.records:
        record.update(generated.get(Path(record["path"]).name, {}))
    return found
