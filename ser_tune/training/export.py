"""The one folder format of a tuned model, read by predict and cross-corpus evaluation.

``model.json`` (encoder spec, labels, settings, preprocessing, metrics, and the PEFT plan when
LoRA/adapters were injected) and ``weights.pt`` (head weights and the encoder weights that
fine-tuning changed or added; the rest is the encoder spec's own weights, loaded from its source).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..encoders import SpeechEncoder, load_encoder
from .head import EmotionHead, masked_mean
from .settings import TrialSettings

FORMAT = "ser_tune.model/1"


class ModelFolderError(ValueError):
    """A model folder is missing or not in ser_tune's format; the message names it."""


def save_model(folder: str | Path, *, state: dict, encoder_spec: str, labels: list[str], settings: dict,
               num_states: int, hidden_size: int, metrics: dict | None = None, sample_rate: int = 16000,
               extra: dict | None = None) -> Path:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"head": state["head"], "encoder": state.get("encoder", {})}, tmp / "weights.pt")
    meta = {"format": FORMAT, "encoder": encoder_spec, "labels": list(labels), "settings": settings,
            "num_states": num_states, "hidden_size": hidden_size, "sample_rate": sample_rate,
            "max_length": settings.get("max_length"), "metrics": metrics or {}, **(extra or {})}
    (tmp / "model.json").write_text(json.dumps(meta, indent=2, default=_jsonable))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


@dataclass
class TunedModel:
    meta: dict
    encoder: SpeechEncoder
    head: EmotionHead

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    @property
    def max_length(self) -> float | None:
        return self.meta.get("max_length")

    @torch.no_grad()
    def embed(self, wave: np.ndarray) -> torch.Tensor:
        """Per-layer pooled features (1, L+1, D) of one waveform at ``sample_rate``, cropped to max_length."""
        if self.max_length is not None:
            wave = wave[: int(round(self.max_length * self.sample_rate))]
        x = torch.from_numpy(np.array(wave, dtype=np.float32))[None]
        states, mask = self.encoder(x, torch.tensor([x.shape[1]]))
        return torch.stack([masked_mean(h, mask) for h in states], dim=1)

    @property
    def n_classes(self) -> int:
        return len(self.labels) if self.meta.get("task", "categories") in ("categories", "both") else 0

    @property
    def dimensions(self) -> list[str]:
        return list(self.meta.get("dimensions") or [])

    @torch.no_grad()
    def predict_proba(self, wave: np.ndarray) -> np.ndarray:
        if not self.n_classes:
            raise ModelFolderError("this model predicts dimensions only, not emotion categories")
        return torch.softmax(self.head(self.embed(wave))[:, : self.n_classes], -1)[0].numpy()

    @torch.no_grad()
    def predict(self, wave: np.ndarray) -> dict:
        """{"emotion", "probabilities"} for categories and {"dimensions": {name: value}} (the corpus's
        own scale, e.g. 1-5) for dimensional models."""
        out = self.head(self.embed(wave))[0].numpy()
        result: dict = {}
        if self.n_classes:
            probs = np.exp(out[: self.n_classes] - out[: self.n_classes].max())
            probs /= probs.sum()
            result["emotion"] = self.labels[int(probs.argmax())]
            result["probabilities"] = {label: float(p) for label, p in zip(self.labels, probs)}
        if self.dimensions:
            z = out[self.n_classes:]
            mean, std = np.array(self.meta["dimension_mean"]), np.array(self.meta["dimension_std"])
            result["dimensions"] = {name: float(v) for name, v in zip(self.dimensions, z * std + mean)}
        return result


def load_model(folder: str | Path) -> TunedModel:
    folder = Path(folder)
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise ModelFolderError(f"{folder}: not a ser_tune model folder (no model.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ModelFolderError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    weights = torch.load(folder / "weights.pt", weights_only=False)
    encoder = load_encoder(meta["encoder"])
    if meta.get("peft"):  # inject the same PEFT modules the trial trained before loading their weights
        from .peft import PeftError, PeftPlan, apply_peft

        try:
            apply_peft(encoder, PeftPlan.from_dict(meta["peft"]))
        except PeftError as err:
            raise ModelFolderError(f"{meta_path}: peft: {err}") from None
        encoder.requires_grad_(False)
    if weights["encoder"]:
        missing = set(weights["encoder"]) - {n for n, _ in encoder.named_parameters()}
        if missing:
            raise ModelFolderError(f"{folder}: fine-tuned weights {sorted(missing)[:3]} do not fit encoder {meta['encoder']}")
        encoder.load_state_dict(weights["encoder"], strict=False)
    s = TrialSettings.from_config(meta["settings"])
    outputs = (len(meta["labels"]) if s.uses_categories else 0) + len(meta.get("dimensions") or [])
    head = EmotionHead(meta["num_states"], meta["hidden_size"], outputs, layer=s.layer, kind=s.head,
                       hidden=s.head_hidden, dropout=s.dropout)
    head.load_state_dict(weights["head"])
    head.eval()
    encoder.eval()
    return TunedModel(meta=meta, encoder=encoder, head=head)
