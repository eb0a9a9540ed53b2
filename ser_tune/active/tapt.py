"""Task-adaptive pre-training (TAPT): continue an encoder's own self-supervised objective on the
unlabelled audio of the target corpus, then save it as an encoder every other part of ser_tune loads.

Only wav2vec2 has such an objective in transformers (``Wav2Vec2ForPreTraining``: contrastive loss
over masked time steps against Gumbel-quantised targets, plus the codebook diversity loss). One step:

1. draw ``batch_size`` clips, crop each at a random offset to a common length (``max_length``
   seconds, or the shortest clip of the batch: equal lengths need no padding, so group-norm models
   such as wav2vec2-base see no padded samples), normalise each crop as the feature extractor does;
2. mask spans of frames (``_compute_mask_indices``: ``mask_prob``, ``mask_length``, at least two
   spans per clip) and sample negatives among each clip's masked frames (``_sample_negative_indices``;
   ``num_negatives`` capped to the masked frames a clip has, minus the positive; clips shorter than
   two mask spans are left out);
3. the model's loss (summed over masked frames) divided by the masked frame count, AdamW with linear
   warm-up then linear decay, gradient clipping, Gumbel temperature decaying geometrically from
   ``gumbel_start`` to ``gumbel_end`` over the steps.

The convolutional feature encoder is frozen by default (``freeze_feature_encoder``): fine-tuning keeps
it frozen too, and on a CPU its backward pass is most of a step's cost.

Output: a folder with the base ``Wav2Vec2Model`` weights and the source's config (masking settings as
in the source) and feature-extractor config, loadable as ``hf:<folder>``; ``tapt.json`` beside them
records the source, settings, per-step losses, the loss on a fixed evaluation batch (same crops, masks
and negatives, eval mode) before and after, and which pre-training head weights started fresh (a
source saved as a plain ``Wav2Vec2Model`` has no quantizer / ``project_q`` / ``project_hid``:
they are initialised from ``seed``).

``tapt_encoder`` reads the audio and runs ``pretrain`` once per (encoder weights, clips, settings):
the result is kept under ``storage_root/_tapt/<key>`` and found again, under a file lock, by any
later or concurrent caller.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Sequence

import numpy as np
from filelock import FileLock
from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError

from ser_tune.schema import error_line, invalid

log = logging.getLogger(__name__)

TAPT_VERSION = 2          # part of the cache key: bump when the recipe changes what a run produces
MODEL_SAMPLE_RATE = 16000  # wav2vec2's rate

_NO_OBJECTIVE = {
    "whisper": "Whisper is trained on supervised transcription/translation and transformers has no "
               "self-supervised objective for its encoder",
    "hubert": "transformers has no pre-training head for HuBERT (its masked prediction of k-means "
              "cluster targets is not implemented there)",
    "wavlm": "transformers has no pre-training head for WavLM",
    "data2vec-audio": "transformers has no pre-training head for data2vec-audio (its teacher-student "
                      "objective is not implemented there)",
}


class TaptError(ValueError):
    """TAPT cannot run (unsupported encoder, bad setting, unusable audio); the message names the cause."""


def _no_bool(value):
    if isinstance(value, bool):
        raise invalid(f"must be a number (got {value!r})")
    return value


Count = Annotated[int, Field(strict=True, ge=1)]
# A number (not a bool; a string such as "1e-4", as YAML reads it, is accepted).
Real = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
Positive = Annotated[Real, Field(gt=0)]


@dataclass
class TaptSettings:
    steps: Count = 100
    lr: Positive = 5e-5
    batch_size: Count = 4
    max_length: Positive = 3.0     # seconds per random crop
    mask_prob: Annotated[Real, Field(gt=0, le=1)] = 0.65
    mask_length: Count = 10
    num_negatives: Count = 100     # capped to what the frames allow
    warmup_fraction: Annotated[Real, Field(ge=0, lt=1)] = 0.1
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    gumbel_start: Positive = 2.0   # Gumbel-softmax temperature at the first step ...
    gumbel_end: Positive = 0.5     # ... decaying geometrically to this at the last
    max_grad_norm: Positive = 1.0
    freeze_feature_encoder: Annotated[bool, Field(strict=True)] = True

    @classmethod
    def from_dict(cls, values: dict | None, where: str = "tapt") -> "TaptSettings":
        """Check every setting; TaptError names ``<where>.<setting>``."""
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise TaptError(f"{where}: must be a mapping of TAPT settings (got {values!r})")
        names = [f.name for f in fields(cls)]
        for key in values:
            if key not in names:
                raise TaptError(f"{where}.{key}: unknown TAPT setting (known: {', '.join(names)})")
        try:
            settings = TAPT_SETTINGS.validate_python(values)
        except ValidationError as err:
            raise TaptError(error_line(err, at=where)) from None
        if settings.gumbel_end > settings.gumbel_start:
            raise TaptError(f"{where}.gumbel_end must be <= gumbel_start ({settings.gumbel_start}) "
                            f"(got {settings.gumbel_end})")
        return settings

    def to_dict(self) -> dict:
        return asdict(self)


TAPT_SETTINGS = TypeAdapter(TaptSettings)


@dataclass
class TaptResult:
    spec: str                # "hf:/absolute/folder" of the adapted encoder
    folder: Path
    losses: list[float]      # per step
    seconds: float
    reused: bool             # True when an identical earlier run was found on disk
    eval_loss_before: float | None = None   # loss on the fixed evaluation batch before training
    eval_loss_after: float | None = None    # ... and after
    info: dict = field(default_factory=dict)  # tapt.json's content


def _model_type(source: str, spec: str) -> str:
    local = Path(source).expanduser()
    if local.is_dir():
        cfg = local / "config.json"
        if not cfg.is_file():
            raise TaptError(f"TAPT cannot use '{spec}': folder {local} has no config.json")
        try:
            return str(json.loads(cfg.read_text()).get("model_type", ""))
        except (OSError, ValueError) as err:
            raise TaptError(f"TAPT cannot use '{spec}': unreadable {cfg} ({err})") from None
    if local.exists() or source.startswith((".", "/", "~")):
        raise TaptError(f"TAPT cannot use '{spec}': folder {source} does not exist")
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(source).model_type
    except (OSError, ValueError) as err:
        raise TaptError(f"TAPT cannot use '{spec}': cannot load its config ({err})") from None


def check_tapt_supported(encoder_spec: str) -> None:
    """Raise TaptError (naming the spec and why) unless the encoder has a TAPT objective; loads no weights."""
    from ser_tune.encoders import EncoderError, EncoderSpec

    spec = encoder_spec
    try:
        parsed = EncoderSpec.parse(spec)
    except EncoderError as err:
        raise TaptError(f"TAPT cannot use '{spec}': {err}") from None
    if parsed.family == "speechbrain":
        raise TaptError(f"TAPT is not available for '{spec}': SpeechBrain models are fine-tuned classifiers "
                        "whose encoder comes without its self-supervised pre-training head; use the hf: spec "
                        "of the underlying wav2vec2 model instead")
    if parsed.is_tiny:
        if parsed.source == "wav2vec2":
            return
        raise TaptError(f"TAPT is not available for '{spec}': {_NO_OBJECTIVE.get(parsed.source, 'no objective')} "
                        "(TAPT needs a wav2vec2 encoder, e.g. tiny-wav2vec2)")
    model_type = _model_type(parsed.source, spec)
    if model_type == "wav2vec2":
        return
    why = _NO_OBJECTIVE.get(model_type, f"model type '{model_type}' has no self-supervised objective here")
    raise TaptError(f"TAPT is not available for '{spec}' (model type '{model_type}'): {why}; "
                    "TAPT needs a wav2vec2 model (Wav2Vec2ForPreTraining)")


def _load_pretraining_model(spec: str, settings: TaptSettings):
    """(Wav2Vec2ForPreTraining, source config, feature extractor, fresh parameter names, notes)."""
    import torch

    from ser_tune.encoders import EncoderSpec
    from ser_tune.encoders.hf import quiet_transformers

    transformers = quiet_transformers()
    notes = []
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)   # fresh head weights are the same in every run
        parsed = EncoderSpec.parse(spec)
        if parsed.is_tiny:
            from ser_tune.encoders.tiny import build_tiny_model

            base = build_tiny_model("wav2vec2")
            source_config = copy.deepcopy(base.config)
            config = _masking_config(source_config, settings)
            model = transformers.Wav2Vec2ForPreTraining(config)
            result = model.wav2vec2.load_state_dict(base.state_dict(), strict=False)
            if result.unexpected_keys:
                raise TaptError(f"{spec}: unexpected weights {result.unexpected_keys}")
            fresh = [f"wav2vec2.{k}" for k in result.missing_keys]
            fresh += [k for k in model.state_dict() if not k.startswith("wav2vec2.")]
            fe = transformers.Wav2Vec2FeatureExtractor()
        else:
            source = parsed.source
            local = Path(source).expanduser()
            if local.exists():
                source = str(local.resolve())
            source_config = transformers.AutoConfig.from_pretrained(source)
            config = _masking_config(source_config, settings)
            model, loading = transformers.Wav2Vec2ForPreTraining.from_pretrained(
                source, config=config, output_loading_info=True)
            fresh = sorted(loading.get("missing_keys") or [])
            try:
                fe = transformers.AutoFeatureExtractor.from_pretrained(source)
            except (OSError, ValueError):
                fe = transformers.Wav2Vec2FeatureExtractor()
                notes.append("source has no feature-extractor config: saved the default Wav2Vec2FeatureExtractor")
    model = model.float()
    head = [k for k in fresh if not k.startswith("wav2vec2.")]
    if head:
        notes.append("pre-training head initialised fresh (the source has no quantizer / project_q / "
                     f"project_hid weights, e.g. it was saved as a plain Wav2Vec2Model): {len(head)} tensors")
    if "wav2vec2.masked_spec_embed" in fresh:
        notes.append("masking vector (masked_spec_embed) initialised fresh: the source does not mask time steps; "
                     "it is used during TAPT only and not saved")
    body = [k for k in fresh if k.startswith("wav2vec2.") and k != "wav2vec2.masked_spec_embed"]
    if body:
        notes.append(f"encoder tensors initialised fresh: {', '.join(body)}")
    for note in notes:
        log.info("TAPT %s: %s", spec, note)
    return model, source_config, fe, fresh, notes


def _masking_config(source_config, settings: TaptSettings):
    """The source config with time masking on (so the model has ``masked_spec_embed``)."""
    config = copy.deepcopy(source_config)
    config.apply_spec_augment = True
    config.mask_time_prob = float(settings.mask_prob)
    config.mask_time_length = int(settings.mask_length)
    config.mask_feature_prob = 0.0
    return config


class _Batches:
    """Random equal-length crops, masks and negatives; numpy RNGs seeded from the settings."""

    def __init__(self, model, waves: list[np.ndarray], settings: TaptSettings, do_normalize: bool, seed: int):
        self.model = model
        self.waves = waves
        self.settings = settings
        self.do_normalize = do_normalize
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []
        self.max_samples = max(1, int(round(settings.max_length * MODEL_SAMPLE_RATE)))

    def frames(self, samples: int) -> int:
        import torch

        return int(self.model._get_feat_extract_output_lengths(torch.tensor(samples)).item())

    def next(self):
        if len(self.order) < min(self.settings.batch_size, len(self.waves)):
            self.order.extend(self.rng.permutation(len(self.waves)).tolist())
        take = min(self.settings.batch_size, len(self.waves))
        picks, self.order = self.order[:take], self.order[take:]
        return self.make([self.waves[i] for i in picks])

    def make(self, waves: list[np.ndarray]):
        import torch
        from transformers.models.wav2vec2.modeling_wav2vec2 import (_compute_mask_indices,
                                                                    _sample_negative_indices)

        length = min(self.max_samples, min(len(w) for w in waves))
        crops = []
        for w in waves:
            start = int(self.rng.integers(0, len(w) - length + 1))
            crop = np.asarray(w[start: start + length], dtype=np.float32)
            crops.append((crop - crop.mean()) / np.sqrt(crop.var() + 1e-7) if self.do_normalize else crop)
        x = torch.from_numpy(np.stack(crops).astype(np.float32))
        t = self.frames(length)
        s = self.settings
        # the transformers helpers draw from numpy's global RNG: seed it from ours, restore it after
        state = np.random.get_state()
        try:
            np.random.seed(int(self.rng.integers(0, 2**31 - 1)))
            mask = _compute_mask_indices((len(waves), t), mask_prob=s.mask_prob, mask_length=s.mask_length,
                                         min_masks=2)
            masked = int(mask.sum(1).min())
            negatives = min(s.num_negatives, masked - 1)
            neg = _sample_negative_indices((len(waves), t), negatives, mask_time_indices=mask)
        finally:
            np.random.set_state(state)
        return x, torch.from_numpy(mask).bool(), torch.from_numpy(neg).long()


def _batch_loss(model, batch):
    """The model's loss per masked frame."""
    x, mask, neg = batch
    out = model(x, mask_time_indices=mask, sampled_negative_indices=neg)
    return out.loss / mask.sum()


def pretrain(encoder_spec: str, waves: list[np.ndarray], settings: TaptSettings, out_dir: Path,
             sample_rate: int = 16000, *, extra_info: dict | None = None) -> TaptResult:
    """Run TAPT on ``waves`` (mono float32) and save the adapted encoder to ``out_dir`` (written to a
    temporary sibling, then renamed). ``out_dir`` must not exist or be empty."""
    import torch

    from ser_tune.encoders import resolve_spec

    check_tapt_supported(encoder_spec)
    spec = resolve_spec(encoder_spec)
    settings = checked_settings(settings)
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TaptError(f"TAPT output folder {out_dir} already exists and is not empty")
    waves = _prepare_waves(spec, waves, sample_rate)

    start = time.perf_counter()
    model, source_config, fe, fresh, notes = _load_pretraining_model(spec, settings)
    do_normalize = bool(getattr(fe, "do_normalize", True))
    usable = usable_clips(model, spec, waves, settings, do_normalize, notes)
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        eval_batch = _Batches(model, usable, settings, do_normalize, settings.seed + 1).next()
        if settings.freeze_feature_encoder:
            model.freeze_feature_encoder()
        eval_before = fixed_batch_loss(model, eval_batch)
        losses = train_steps(model, _Batches(model, usable, settings, do_normalize, settings.seed), settings, spec)
        eval_after = fixed_batch_loss(model, eval_batch)
    seconds = time.perf_counter() - start
    log.info("TAPT %s: %d steps in %.1f s, loss %.3f -> %.3f (fixed batch %.3f -> %.3f)", spec, settings.steps,
             seconds, losses[0], losses[-1], eval_before, eval_after)
    info = {"version": TAPT_VERSION, "source_spec": spec, "settings": settings.to_dict(),
            "sample_rate": MODEL_SAMPLE_RATE, "n_clips": len(waves), "n_clips_used": len(usable),
            "audio_seconds": round(float(sum(len(w) for w in usable)) / MODEL_SAMPLE_RATE, 3), "losses": losses,
            "eval_loss_before": eval_before, "eval_loss_after": eval_after, "seconds": seconds,
            "fresh_parameters": fresh, "notes": notes, **(extra_info or {})}
    _save(model, source_config, fe, info, out_dir)
    return TaptResult(spec=f"hf:{out_dir}", folder=out_dir, losses=losses, seconds=seconds, reused=False,
                      eval_loss_before=eval_before, eval_loss_after=eval_after, info=info)


def checked_settings(settings) -> TaptSettings:
    """TaptSettings (or a mapping of them), every field checked (also fields set directly)."""
    if isinstance(settings, dict):
        settings = TaptSettings.from_dict(settings)
    if not isinstance(settings, TaptSettings):
        raise TaptError(f"TAPT settings must be TaptSettings or a mapping, got {type(settings).__name__}")
    return TaptSettings.from_dict(settings.to_dict())


def usable_clips(model, spec: str, waves: list[np.ndarray], settings: TaptSettings, do_normalize: bool,
                 notes: list[str]) -> list[np.ndarray]:
    """The clips long enough for two mask spans (so each has >= 2 masked frames); a note says how many
    were left out."""
    min_frames = 2 * settings.mask_length
    probe = _Batches(model, waves, settings, do_normalize, settings.seed)
    usable = [w for w in waves if probe.frames(min(len(w), probe.max_samples)) >= min_frames]
    if not usable:
        longest = max(len(w) for w in waves) / MODEL_SAMPLE_RATE
        raise TaptError(f"TAPT on '{spec}': every clip is too short for mask_length {settings.mask_length} "
                        f"(needs {min_frames} frames; longest clip {longest:.2f} s, max_length {settings.max_length} s)")
    if len(usable) < len(waves):
        notes.append(f"{len(waves) - len(usable)} clips shorter than 2 x mask_length frames left out")
        log.info("TAPT %s: %s", spec, notes[-1])
    return usable


def fixed_batch_loss(model, batch) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float(_batch_loss(model, batch))


def train_steps(model, batches: "_Batches", settings: TaptSettings, spec: str) -> list[float]:
    """``settings.steps`` optimiser steps of the contrastive objective (AdamW, linear warm-up and decay,
    the Gumbel temperature annealed geometrically); returns each step's loss."""
    import torch
    from transformers.optimization import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_fraction * settings.steps),
                                                settings.steps)
    losses: list[float] = []
    model.train()
    for step in range(settings.steps):
        frac = step / max(1, settings.steps - 1)
        model.set_gumbel_temperature(settings.gumbel_start * (settings.gumbel_end / settings.gumbel_start) ** frac)
        loss = _batch_loss(model, batches.next())
        if not torch.isfinite(loss):
            raise TaptError(f"TAPT on '{spec}': loss became {float(loss)} at step {step + 1} "
                            f"(lower tapt lr, now {settings.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def _prepare_waves(spec: str, waves: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise TaptError(f"TAPT on '{spec}': sample_rate must be a positive integer, got {sample_rate!r}")
    if waves is None or len(waves) == 0:
        raise TaptError(f"TAPT on '{spec}': no audio given")
    out = []
    for i, w in enumerate(waves):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 1 or w.size == 0:
            raise TaptError(f"TAPT on '{spec}': wave {i} must be a non-empty mono 1-D array (shape {w.shape})")
        if not np.isfinite(w).all():
            raise TaptError(f"TAPT on '{spec}': wave {i} has non-finite samples")
        if sample_rate != MODEL_SAMPLE_RATE:
            from ser_tune.data.audio import resample

            w = resample(w, int(sample_rate), MODEL_SAMPLE_RATE)
        out.append(w)
    return out


def _save(model, source_config, fe, info: dict, out_dir: Path) -> None:
    base = model.wav2vec2
    if not (source_config.mask_time_prob > 0 or source_config.mask_feature_prob > 0):
        # the source had no masking vector: leave the one TAPT used out, so the folder is what a
        # Wav2Vec2Model built from the source config expects
        base._parameters.pop("masked_spec_embed", None)
    config = copy.deepcopy(source_config)
    config.architectures = ["Wav2Vec2Model"]
    base.config = config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        base.save_pretrained(str(tmp))
        fe.save_pretrained(str(tmp))
        (tmp / "tapt.json").write_text(json.dumps(info, indent=1) + "\n")
        if out_dir.exists():
            out_dir.rmdir()   # empty (checked by the caller)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tapt_key(encoder_spec: str, paths: Sequence[str], settings: TaptSettings, sample_rate: int = 16000) -> str:
    from ser_tune.encoders import spec_fingerprint

    payload = {"version": TAPT_VERSION, "spec": encoder_spec, "fingerprint": spec_fingerprint(encoder_spec),
               "paths": sorted(str(Path(p).expanduser().resolve()) for p in paths),
               "settings": settings.to_dict(), "sample_rate": int(sample_rate)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_result(folder: Path) -> TaptResult:
    """The TaptResult of a finished TAPT folder (reused=True)."""
    folder = Path(folder).resolve()
    info = json.loads((folder / "tapt.json").read_text())
    return TaptResult(spec=f"hf:{folder}", folder=folder, losses=list(info.get("losses", [])),
                      seconds=float(info.get("seconds", 0.0)), reused=True,
                      eval_loss_before=info.get("eval_loss_before"), eval_loss_after=info.get("eval_loss_after"),
                      info=info)


def tapt_encoder(encoder_spec: str, paths: list[str], settings: TaptSettings, storage_root: Path,
                 sample_rate: int = 16000) -> TaptResult:
    """TAPT on the audio at ``paths``, once: the adapted encoder is kept under
    ``storage_root/_tapt/<key>`` and an identical later (or concurrent) call reuses it."""
    from ser_tune.data.audio import AudioStore
    from ser_tune.data.errors import DataError
    from ser_tune.encoders import resolve_spec

    check_tapt_supported(encoder_spec)
    spec = resolve_spec(encoder_spec)
    settings = checked_settings(settings)
    paths = [str(p) for p in (paths or [])]
    if not paths:
        raise TaptError(f"TAPT on '{spec}': no audio files given")
    root = Path(storage_root).expanduser().resolve() / "_tapt"
    root.mkdir(parents=True, exist_ok=True)
    key = tapt_key(spec, paths, settings, sample_rate)
    folder = root / key
    with FileLock(root / f".{key}.lock"):
        if (folder / "tapt.json").is_file():
            log.info("TAPT %s: reusing %s", spec, folder)
            return load_result(folder)
        if folder.exists():   # not finished (no tapt.json): start again
            shutil.rmtree(folder)
        store = AudioStore(int(sample_rate))
        try:
            waves = [store.get(p) for p in paths]
        except DataError as err:
            raise TaptError(f"TAPT on '{spec}': {err}") from None
        return pretrain(spec, waves, settings, folder, sample_rate=int(sample_rate),
                        extra_info={"key": key, "paths": sorted(str(Path(p).resolve()) for p in paths)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ser_tune.active.tapt",
                                     description="Task-adaptive pre-training of a wav2vec2 encoder on a corpus's audio.")
    parser.add_argument("--encoder", required=True, help="encoder spec (hf:<wav2vec2 folder or hub id>, tiny-wav2vec2)")
    parser.add_argument("--corpus", required=True, help="corpus name (e.g. emodb, synthetic)")
    parser.add_argument("--root", required=True, help="corpus folder")
    parser.add_argument("--out", required=True, help="storage folder: the encoder goes to OUT/_tapt/<key>")
    defaults = TaptSettings()
    for f in fields(TaptSettings):
        default = getattr(defaults, f.name)
        convert = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, type=convert,
                            help=f"(default {default})")
    parser.add_argument("--exclude-speakers", nargs="+", default=[], metavar="SPEAKER",
                        help="leave these speakers' audio out (e.g. the test speakers of a later study: TAPT on "
                             "their audio would make its test transductive)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    from ser_tune.data import load_corpus
    from ser_tune.data.errors import DataError

    try:
        settings = TaptSettings.from_dict({f.name: getattr(args, f.name) for f in fields(TaptSettings)
                                           if getattr(args, f.name) is not None}, where="tapt")
        corpus = load_corpus(args.corpus, args.root)
        table = corpus.table
        unknown = sorted(set(args.exclude_speakers) - set(table["speaker"].astype(str)))
        if unknown:
            raise TaptError(f"--exclude-speakers: {', '.join(unknown)} not among {args.root}'s speakers "
                            f"({', '.join(sorted(table['speaker'].astype(str).unique()))})")
        kept = table[~table["speaker"].astype(str).isin(args.exclude_speakers)]
        result = tapt_encoder(args.encoder, kept["path"].tolist(), settings, Path(args.out))
    except (TaptError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {"spec": result.spec, "reused": result.reused, "steps": len(result.losses),
               "seconds": round(result.seconds, 2), "eval_loss_before": result.eval_loss_before,
               "eval_loss_after": result.eval_loss_after}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"TAPT {'reused' if result.reused else 'done'}: {summary['steps']} steps, {summary['seconds']} s, "
              f"fixed-batch loss {result.eval_loss_before:.3f} -> {result.eval_loss_after:.3f}\n{result.spec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
