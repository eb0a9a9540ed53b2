"""The one folder format of a tuned model, read by predict and cross-corpus evaluation.

``model.json`` (encoder spec, labels, settings, preprocessing, metrics, the PEFT plan when
LoRA/adapters were injected, and ``encoder_layers`` when the encoder is truncated) and ``weights.safetensors`` (the head's tensors as ``head.<name>`` and
the encoder tensors fine-tuning changed or added as ``encoder.<name>``; the rest is the encoder
spec's own weights, loaded from its source). Neither file can run code when read: a model folder
may come from anywhere. Folders of format 1 kept a pickle (``weights.pt``); they are refused
unread, with how to export the model again.

A head that reads one hidden state k below the top needs only the encoder's layers 0..k-1: such a
model is exported truncated there (:func:`cut_at_read_layer`; ``encoder_layers`` = k, and
``load_model`` truncates the spec's encoder to it), a cheaper encoder giving the same features.
A model whose trained layers read frames averaged in time (``frame_average``) names the hidden state averaged
before them (``average_frames_from``), and computes its features so.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..data import SAMPLE_RATE
from ..encoders import SpeechEncoder, load_encoder
from ..encoders.base import average_in_time
from ..encoders.cache import layer_frames_of
from ..encoders.precision import compute, for_model
from .head import AttentiveHead, make_head, pool_states
from .metrics import class_probabilities_of
from .normalize import FeatureNorm
from .settings import SettingsError, TrialSettings

FORMAT = "ser_tune.model/2"
OLD_FORMATS = ("ser_tune.model/1",)      # weights in a pickle (weights.pt): never loaded
WEIGHTS_FILE = "weights.safetensors"
WEIGHT_GROUPS = ("head", "encoder", "norm")   # tensor name prefixes in WEIGHTS_FILE ("norm": feature statistics)
REEXPORT = ("export it again with this version: run its study again, or "
            "`python -m ser_tune.train ... --export DIR`")


class ModelFolderError(ValueError):
    """A model folder is missing or not in ser_tune's format; the message names it."""


def save_model(folder: str | Path, *, state: dict, encoder_spec: str, labels: list[str], settings: dict,
               num_states: int, hidden_size: int, metrics: dict | None = None, sample_rate: int = SAMPLE_RATE,
               extra: dict | None = None) -> Path:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_weights(tmp / WEIGHTS_FILE, state)
    meta = {"format": FORMAT, "encoder": encoder_spec, "labels": list(labels), "settings": settings,
            "num_states": num_states, "hidden_size": hidden_size, "sample_rate": sample_rate,
            "max_length": settings.get("max_length"), "metrics": metrics or {}, **(extra or {})}
    (tmp / "model.json").write_text(json.dumps(meta, indent=2, default=to_jsonable))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


@dataclass
class ExportCut:
    """What a model folder keeps (see :func:`cut_at_read_layer`)."""
    state: dict                   # {"head", "encoder", "norm"} tensors
    settings: dict
    num_states: int
    encoder_layers: int | None    # transformer layers kept; None: every layer
    peft: dict | None             # the PEFT plan, None when no PEFT module is kept


def read_layer(settings: dict, num_states: int) -> int | None:
    """The hidden state (0..num_states-1) a head with ``settings`` reads; None for a learned mix of all
    or every layer side by side."""
    layer = settings.get("layer", "weighted")
    return None if layer in ("weighted", "all") else int(layer) % num_states


def cut_at_read_layer(state: dict, settings: dict, num_states: int, hidden_size: int, *,
                      encoder: SpeechEncoder | None = None, peft: dict | None = None) -> ExportCut:
    """A model whose head reads hidden state k < num_states - 1, cut to what that state needs: the
    encoder's layers 0..k-1 (``encoder_layers`` = k), the head's feature statistics and the
    normalisation of states 0..k (the head's BatchNorm is per feature, so keeping a slice of it is
    exact), and the encoder weights of the kept layers (``encoder``: the module those weights' names
    belong to; needed only when ``state`` holds encoder weights). Anything else is returned as it is."""
    k = read_layer(settings, num_states)
    if k is None or k == num_states - 1:
        return ExportCut(state, settings, num_states, None, peft)
    width = (k + 1) * hidden_size
    head = {name: value[:width] if name in ("norm.running_mean", "norm.running_var") else value
            for name, value in state["head"].items()}
    norm = {name: value[: k + 1] for name, value in (state.get("norm") or {}).items()}
    weights = state.get("encoder") or {}
    if weights:
        kept = copy.deepcopy(encoder)
        kept.truncate(k)
        weights = {name: value for name, value in weights.items() if name in kept.state_dict()}
    if peft is not None and int(peft["first_layer"]) >= k:
        peft = None   # every adapted layer is above the cut
    return ExportCut({"head": head, "encoder": weights, "norm": norm}, {**settings, "layer": k}, k + 1, k, peft)


def write_weights(path: str | Path, state: dict) -> None:
    """``state``'s head and encoder tensors ({"head": {...}, "encoder": {...}}) to a safetensors file."""
    tensors = {f"{group}.{name}": value.detach().cpu().contiguous().clone()   # own storage: safetensors
               for group in WEIGHT_GROUPS for name, value in (state.get(group) or {}).items()}  # refuses shared
    save_file(tensors, str(path), metadata={"format": FORMAT})


def read_weights(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"head": {name: tensor}, "encoder": {name: tensor}} from a weights file (ModelFolderError naming it
    when it is not a safetensors file of those groups)."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ModelFolderError(f"{path}: not a readable safetensors weights file ({err})") from None
    groups: dict[str, dict[str, torch.Tensor]] = {group: {} for group in WEIGHT_GROUPS}
    for key, value in tensors.items():
        group, _, name = key.partition(".")
        if group not in groups or not name:
            raise ModelFolderError(f"{path}: tensor {key!r} is not head.<name>, encoder.<name> or norm.<name>")
        groups[group][name] = value
    return groups


def to_jsonable(value):
    """JSON's fallback for numpy scalars and arrays (anything else becomes its str)."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


@dataclass
class TunedModel:
    meta: dict
    encoder: SpeechEncoder
    head: nn.Module     # an EmotionHead (pooled statistics), or an AttentiveHead (frames)
    norm: dict = field(default_factory=dict)   # the training clips' feature statistics ("mean", "std")
    frozen: bool = False   # its encoder is the spec's own weights (none trained, none injected)
    # every hidden state's mean and std of a clip by id(wave), shared by an ensemble's frozen members of one
    # encoder spec: one encode of a clip for all of them, by the deepest member's encoder, each member
    # reading its own first ``shared_states`` states (training.ensemble.EnsembleModel fills and clears it)
    shared_embeddings: dict | None = None
    shared_states: int | None = None

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    @property
    def max_length(self) -> float | None:
        return self.meta.get("max_length")

    @property
    def precision(self) -> str:
        """What the encoder's layers run in here: the trial's precision where this CPU has it fast (see
        ``encoders.precision.for_model``)."""
        return for_model(self.meta.get("settings", {}).get("precision"))

    @property
    def reads_frames(self) -> bool:
        return isinstance(self.head, AttentiveHead)

    def waveform(self, wave: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One waveform at ``sample_rate``, cropped to max_length, as the encoder takes it: (1, S) and its length."""
        if self.max_length is not None:
            wave = wave[: int(round(self.max_length * self.sample_rate))]
        x = torch.from_numpy(np.array(wave, dtype=np.float32))[None]
        return x, torch.tensor([x.shape[1]])

    @torch.no_grad()
    def hidden_states(self, wave: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every hidden state (1, T, D) of one waveform at ``sample_rate``, cropped to max_length, and its mask."""
        with compute(self.precision):
            states, mask = self.encoder(*self.waveform(wave))
        return [state.float() for state in states], mask

    @torch.no_grad()
    def embed(self, wave: np.ndarray) -> torch.Tensor:
        """What the head reads of one waveform: per-layer pooled statistics (1, L+1, D'), pooled as the
        model's ``pooling`` setting says; for a head that reads frames, every layer's frames (1, T', L+1, D)
        as the feature cache holds them (averaged over ``frame_average`` in time, rounded to float16)."""
        pooling = str(self.meta.get("settings", {}).get("pooling", "mean"))
        averaged_from = self.meta.get("average_frames_from")
        if averaged_from is not None:
            return self.pooled_with_averaged_frames(wave, int(averaged_from), pooling)
        if self.shared_embeddings is not None and not self.reads_frames:
            return self.shared_statistics(wave, pooling)
        states, mask = self.hidden_states(wave)
        if self.reads_frames:
            return self.frames(states, mask)
        return pool_states(states, mask, pooling)

    def shared_statistics(self, wave: np.ndarray, pooling: str) -> torch.Tensor:
        """``embed`` from the ensemble's shared store: every state's mean and std of ``wave``, encoded once
        by the deepest member's encoder; a cut encoder's states equal the full one's first states
        (``SpeechEncoder.truncate``), so this member reads the first ``shared_states``."""
        store = self.shared_embeddings
        if id(wave) not in store:
            states, mask = self.hidden_states(wave)
            store[id(wave)] = pool_states(states, mask, "meanstd")
        stats = store[id(wave)][:, : self.shared_states]
        return stats[..., : stats.shape[-1] // 2] if pooling == "mean" else stats

    def pooled_with_averaged_frames(self, wave: np.ndarray, boundary: int, pooling: str) -> torch.Tensor:
        """``embed`` of a model whose trained layers (those above hidden state ``boundary``) read that state's
        frames averaged over ``frame_average`` in time, as they did in training."""
        with compute(self.precision):
            hidden, mask = self.encoder.embed(*self.waveform(wave))
            low = [hidden, *self.encoder.run_layers(hidden, mask, 0, boundary)]
            above, above_mask = average_in_time(low[-1], mask, int(self.meta["settings"]["frame_average"]))
            high = self.encoder.run_layers(above, above_mask, boundary)
        return torch.cat([pool_states([state.float() for state in low], mask, pooling),
                          pool_states([state.float() for state in high], above_mask, pooling)], dim=1)

    def frames(self, states: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        average = int(self.meta.get("settings", {}).get("frame_average", 1))
        [frames] = layer_frames_of(states, [int(mask.sum())], average)
        return torch.from_numpy(frames.astype(np.float32))[None]

    @property
    def n_classes(self) -> int:
        return len(self.labels) if self.meta.get("task", "categories") in ("categories", "both") else 0

    @property
    def dimensions(self) -> list[str]:
        return list(self.meta.get("dimensions") or [])

    @property
    def normalize(self) -> str:
        return str(self.meta.get("settings", {}).get("normalize", "none"))

    def normalized(self, features: torch.Tensor, speakers=None, *, own_statistics: bool = False) -> torch.Tensor:
        """``features`` (N, L+1, D) of clips taken together, z-scored as the model was trained: with its
        training corpus's statistics (``corpus``; the clips' own with ``own_statistics``, e.g. another
        corpus), or each speaker's own (``speaker``; ``speakers`` gives the clips' speakers, default:
        one speaker)."""
        norm = self.feature_norm(features, speakers, own_statistics=own_statistics)
        return features if norm is None else norm.apply(features, np.arange(len(features)))

    def feature_norm(self, features: torch.Tensor, speakers=None, *, own_statistics: bool = False) -> FeatureNorm | None:
        """The normalisation of ``normalized`` for clips with per-layer features ``features`` (N, L+1, D)."""
        if self.normalize == "none":
            return None
        speakers = ["speaker"] * len(features) if speakers is None else list(speakers)
        reference = None if own_statistics else (self.norm["mean"].double().numpy(), self.norm["std"].double().numpy())
        return FeatureNorm.fit(self.normalize, features.numpy(), speakers=speakers, rows=np.arange(len(features)),
                               reference=reference)

    @torch.no_grad()
    def outputs(self, waves: list[np.ndarray], speakers=None) -> np.ndarray:
        """Head outputs (N, outputs) of waves taken together (normalised together, see ``normalized``)."""
        if self.reads_frames:
            return self.frame_outputs(waves, speakers)
        features = torch.cat([self.embed(w) for w in waves])
        return self.head(self.normalized(features, speakers)).numpy()

    @torch.no_grad()
    def frame_outputs(self, waves: list[np.ndarray], speakers=None) -> np.ndarray:
        """``outputs`` of a head that reads frames: each clip's frames normalised with the statistics its
        per-layer means give (as in training), one clip at a time."""
        clips = []
        for wave in waves:
            states, mask = self.hidden_states(wave)
            clips.append((self.frames(states, mask), pool_states(states, mask, "mean")))
        norm = self.feature_norm(torch.cat([means for _, means in clips]), speakers)
        outs = [self.head(frames if norm is None else norm.apply_frames(frames, [i]))
                for i, (frames, _) in enumerate(clips)]
        return torch.cat(outs).numpy()

    @torch.no_grad()
    def predict_proba(self, wave: np.ndarray) -> np.ndarray:
        if not self.n_classes:
            raise ModelFolderError("this model predicts dimensions only, not emotion categories")
        return class_probabilities_of(self.outputs([wave])[:, : self.n_classes])[0]

    @torch.no_grad()
    def predict(self, wave: np.ndarray) -> dict:
        """{"emotion", "probabilities"} for categories and {"dimensions": {name: value}} (the corpus's
        own scale, e.g. 1-5) for dimensional models."""
        return self.describe_output(self.outputs([wave])[0])

    def predict_many(self, waves: list[np.ndarray], speakers=None) -> list[dict]:
        """``predict`` for clips taken together (``speaker`` normalisation uses their own statistics)."""
        return [self.describe_output(out) for out in self.outputs(waves, speakers)]

    def describe_output(self, out: np.ndarray) -> dict:
        result: dict = {}
        if self.n_classes:
            probs = class_probabilities_of(out[None, : self.n_classes])[0]
            result["emotion"] = self.labels[int(probs.argmax())]
            result["probabilities"] = {label: float(p) for label, p in zip(self.labels, probs)}
        if self.dimensions:
            z = out[self.n_classes:]
            mean, std = np.array(self.meta["dimension_mean"]), np.array(self.meta["dimension_std"])
            result["dimensions"] = {name: float(v) for name, v in zip(self.dimensions, z * std + mean)}
        return result


def load_model(folder: str | Path, encoder_loader: Callable[[str], SpeechEncoder] | None = None):
    """The tuned model in ``folder``; a ModelFolderError naming the file for anything that does not fit.
    ``encoder_loader`` (default ``load_encoder``) gives a fresh encoder of a spec, e.g. a copy of one a
    process keeps loaded; it is truncated here when the folder says so. An ensemble's folder
    (``ensemble.json``) gives a ``training.ensemble.EnsembleModel`` of its members, each loaded so."""
    from .ensemble import EnsembleError, is_ensemble, load_ensemble

    folder = Path(folder)
    if is_ensemble(folder):
        try:
            return load_ensemble(folder, lambda member: load_model(member, encoder_loader))
        except EnsembleError as err:
            raise ModelFolderError(str(err)) from None
    meta = read_meta(folder)
    weights_path = folder / WEIGHTS_FILE
    weights = read_weights(weights_path)
    encoder = (encoder_loader or load_encoder)(meta["encoder"])
    if meta.get("encoder_layers") is not None:
        encoder.truncate(int(meta["encoder_layers"]))
    if meta.get("peft"):  # inject the same PEFT modules the trial trained before loading their weights
        from .peft import PeftError, PeftPlan, apply_peft

        try:
            apply_peft(encoder, PeftPlan.from_dict(meta["peft"]))
        except PeftError as err:
            raise ModelFolderError(f"{folder / 'model.json'}: peft: {err}") from None
        encoder.requires_grad_(False)
    load_tensors(encoder, weights["encoder"], weights_path, f"encoder {meta['encoder']}", complete=False)
    try:
        head = head_of(meta)
    except (SettingsError, TypeError, ValueError) as err:
        raise ModelFolderError(f"{folder / 'model.json'}: {err}") from None
    load_tensors(head, weights["head"], weights_path, "the head model.json describes", complete=True)
    head.eval()
    encoder.eval()
    if meta.get("settings", {}).get("normalize", "none") != "none" and set(weights["norm"]) != {"mean", "std"}:
        raise ModelFolderError(f"{weights_path}: a model with normalised features needs norm.mean and norm.std")
    return TunedModel(meta=meta, encoder=encoder, head=head, norm=weights["norm"],
                      frozen=not weights["encoder"] and not meta.get("peft"))


def read_meta(folder: Path) -> dict:
    """``model.json`` of a model folder of this format (refusing format 1 without reading its pickle)."""
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise ModelFolderError(f"{folder}: not a ser_tune model folder (no model.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelFolderError(f"{meta_path}: not readable JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ModelFolderError(f"{meta_path}: must hold a JSON object")
    if meta.get("format") in OLD_FORMATS:
        raise ModelFolderError(f"{folder}: a model folder of format {meta['format']!r}, whose weights.pt is a pickle "
                               f"(never loaded: unpickling can run code); {REEXPORT}")
    if meta.get("format") != FORMAT:
        raise ModelFolderError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in ("encoder", "labels", "settings", "num_states", "hidden_size", "sample_rate")
               if k not in meta]
    if missing:
        raise ModelFolderError(f"{meta_path}: lacks {missing[0]!r}")
    return meta


def head_of(meta: dict, outputs: int | None = None) -> nn.Module:
    """A new head of the kind model.json ``meta`` describes, with ``outputs`` outputs (default: its classes,
    when it predicts them, and its dimensions)."""
    s = TrialSettings.from_config(meta["settings"])
    if outputs is None:
        outputs = (len(meta["labels"]) if s.uses_categories else 0) + len(meta.get("dimensions") or [])
    return make_head(s, int(meta["num_states"]), int(meta["hidden_size"]), outputs)


def load_tensors(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path, what: str, *,
                 complete: bool) -> None:
    """Copy ``tensors`` into ``module`` (every one of its tensors when ``complete``) after checking names
    and shapes: a ModelFolderError naming ``path`` and the first tensor that does not fit ``what``."""
    expected = module.state_dict()
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise ModelFolderError(f"{path}: tensor {unknown[0]!r} does not fit {what}")
    missing = sorted(set(expected) - set(tensors)) if complete else []
    if missing:
        raise ModelFolderError(f"{path}: tensor {missing[0]!r} of {what} is missing")
    for name, value in tensors.items():
        if value.shape != expected[name].shape:
            raise ModelFolderError(f"{path}: tensor {name!r} has shape {tuple(value.shape)}; "
                                   f"{what} needs {tuple(expected[name].shape)}")
    module.load_state_dict(tensors, strict=complete)
