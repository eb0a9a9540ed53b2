"""One fine-tuning run: the unit every search strategy repeats.

Epochs before ``unfreeze_epoch`` train only the head; later epochs also train the encoder's top
``k`` layers (or all of them). With ``features: cache`` frozen layers come from the study's
feature cache, so head epochs cost only the head and top-k epochs run only the top layers;
with ``features: naive`` every epoch re-encodes every clip (the reference code's way), kept
for the benchmark. Each epoch reports validation BCA; the best epoch's model is evaluated once
on the test speakers at the end.
With ``peft`` (LoRA, bottleneck adapters; see ``peft.py``) the same top layers get new modules
instead: only those and the head train, the pretrained weights stay as they are.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import AudioStore, crop, pad_batch
from ..encoders import SpeechEncoder, load_encoder, spec_fingerprint
from ..encoders.cache import CachedFeatures, FeatureCache, effective_max_length
from .export import save_model
from .head import EmotionHead, masked_mean
from .metrics import bca, ccc, ccc_loss, confusion
from .peft import PeftPlan, apply_peft, check_peft_settings, start_from
from .settings import TrialSettings

SAMPLE_RATE = 16000  # every supported encoder family consumes 16 kHz audio
DIMENSIONS = ("arousal", "valence", "dominance")


class TrialError(RuntimeError):
    """A trial cannot go on (NaN loss, broken input); the message says why and where."""


@dataclass
class TrialData:
    """The clips of one study in table order, their labels and the split into parts."""
    paths: list[str]
    durations: np.ndarray
    y: np.ndarray
    labels: list[str]
    parts: dict[str, np.ndarray]
    audio: AudioStore = field(repr=False)
    # Continuous attributes (arousal, valence, dominance; NaN where a clip has none), when the corpus has them.
    dims: np.ndarray | None = field(default=None, repr=False)
    dim_names: tuple[str, ...] = ()

    def labelled_dims(self, part: str) -> int:
        """Clips of a part with every dimensional label (the others are excluded from CCC and its loss)."""
        if self.dims is None:
            return 0
        return int(np.isfinite(self.dims[self.parts[part]]).all(1).sum())

    @classmethod
    def from_table(cls, table: pd.DataFrame, assignment: pd.Series, labels: list[str] | None = None,
                   audio: AudioStore | None = None) -> "TrialData":
        labels = list(labels) if labels is not None else sorted(table["label"].unique())
        index = {name: i for i, name in enumerate(labels)}
        missing = sorted(set(table["label"]) - set(index))
        if missing:
            raise TrialError(f"labels {missing} are not in the label list {labels}")
        parts = {p: np.flatnonzero(assignment.reindex(table.index).to_numpy() == p) for p in ("train", "val", "test")}
        for p in ("train", "val"):
            if not len(parts[p]):
                raise TrialError(f"the split has no '{p}' clips")
        dim_names = tuple(d for d in DIMENSIONS if d in table and table[d].notna().any())
        dims = table[list(dim_names)].to_numpy(np.float32) if dim_names else None
        return cls(paths=[str(p) for p in table["path"]], durations=table["duration"].to_numpy(float),
                   y=table["label"].map(index).to_numpy(np.int64), labels=labels, parts=parts,
                   audio=audio or AudioStore(SAMPLE_RATE), dims=dims, dim_names=dim_names)


@dataclass
class TrialResult:
    val_bca: float
    best_epoch: int
    test_bca: float | None
    test_accuracy: float | None
    test_confusion: list[list[int]] | None
    history: list[dict]
    seconds: dict[str, float]
    cache: dict[str, int]
    trainable_params: int
    total_params: int
    state: dict = field(repr=False)          # best epoch's head + trained encoder weights
    settings: dict = field(default_factory=dict)
    test_predictions: np.ndarray | None = field(default=None, repr=False)
    num_states: int = 0
    hidden_size: int = 0
    val_metrics: dict = field(default_factory=dict)    # every validation metric at the best epoch
    test_metrics: dict = field(default_factory=dict)   # every test metric of the best epoch's model

    def metrics(self) -> dict:
        return {"val_bca": self.val_bca, "best_epoch": self.best_epoch, "test_bca": self.test_bca,
                "test_accuracy": self.test_accuracy, "trainable_params": self.trainable_params,
                "total_params": self.total_params, **{f"{k}_seconds": v for k, v in self.seconds.items()},
                **{f"cache_{k}": v for k, v in self.cache.items()}}


class FineTuner:
    def __init__(self, settings: TrialSettings, data: TrialData, *, encoder_spec: str,
                 cache_root: str | Path | None = None,
                 encoder_loader: Callable[[str], SpeechEncoder] = load_encoder):
        settings.validate()  # also settles the default objective for the task
        if settings.peft != "none":
            check_peft_settings(settings)  # before any encoding: a bad lora_targets fails at once
        self.s = settings
        self.data = data
        self.spec = encoder_spec
        self._encoder: SpeechEncoder | None = None
        self._encoder_loader = encoder_loader
        self.seconds = {"load": 0.0, "encode": 0.0, "train": 0.0}
        self.max_length = effective_max_length(settings.max_length, data.durations)
        self.cache = None
        self._peft: PeftPlan | None = None
        if settings.features == "cache":
            if cache_root is None:
                raise TrialError("features: cache needs a cache folder")
            self.cache = FeatureCache(cache_root, encoder_spec, spec_fingerprint(encoder_spec), self._load_encoder)

    # --- pieces ---------------------------------------------------------------------------
    def _load_encoder(self) -> SpeechEncoder:
        if self._encoder is None:
            start = time.perf_counter()
            self._encoder = self._encoder_loader(self.spec)
            self.seconds["load"] += time.perf_counter() - start
            if self._encoder.sample_rate != SAMPLE_RATE:
                raise TrialError(f"{self.spec}: expects {self._encoder.sample_rate} Hz audio; only {SAMPLE_RATE} is supported")
        return self._encoder

    def _wave(self, i: int) -> np.ndarray:
        return crop(self.data.audio.get(self.data.paths[i]), self.max_length, SAMPLE_RATE)

    def _waves(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_batch([self._wave(int(i)) for i in idx])

    # --- the run ---------------------------------------------------------------------------
    def run(self, report: Callable[[dict], None] | None = None, checkpoint_dir: str | Path | None = None,
            resume_dir: str | Path | None = None, *, init_state: dict | None = None,
            freeze: Sequence[str] = ()) -> TrialResult:
        """Train and evaluate. ``init_state`` ({"encoder": {name: tensor}, "head": state dict or None},
        e.g. another trial's ``result.state``) starts from those weights; ``freeze`` keeps groups of
        them fixed ("lora", "adapter", "head"; see ``peft.start_from``)."""
        s = self.s
        torch.manual_seed(s.seed)
        rng = np.random.default_rng(s.seed)
        top_k = s.top_k
        feats: CachedFeatures | None = None
        if self.cache is not None:
            # Boundary = input of the lowest trained layer ("all": the frozen front end's output).
            boundaries = [self._boundary(top_k)] if s.encoder_trains else []
            start = time.perf_counter()
            feats = self.cache.get(self.data.paths, self._wave, self.max_length, boundaries)
            self.seconds["encode"] += self.cache.stats.encode_seconds
            num_states, dim = feats.pooled.shape[1], feats.pooled.shape[2]
        else:
            enc = self._load_encoder()
            num_states, dim = enc.num_layers + 1, enc.hidden_size
        num_layers = num_states - 1
        boundary = None
        if s.encoder_trains:
            boundary = 0 if top_k is None else num_layers - min(top_k, num_layers)
        encoder = self._load_encoder() if (s.encoder_trains or feats is None) else None

        n_classes = len(self.data.labels) if s.uses_categories else 0
        self._prepare_dimensions()
        head = EmotionHead(num_states, dim, n_classes + len(self._dim_names), layer=s.layer, kind=s.head,
                           hidden=s.head_hidden, dropout=s.dropout)
        trained = {}
        if encoder is not None and s.encoder_trains:
            if s.peft != "none":  # PEFT modules on the layers that train; their original weights stay frozen
                self._peft = PeftPlan.from_settings(s, boundary)
                trained = apply_peft(encoder, self._peft)
            else:
                trained = self._trainable_encoder_params(encoder, boundary, top_k)
        fixed: dict[str, nn.Parameter] = {}
        if init_state is not None:
            trained, fixed = start_from(init_state, encoder=encoder if s.encoder_trains else None, head=head,
                                        trained=trained, freeze=freeze)
        # Encoder weights that differ from the pretrained ones from the start: the cache's pooled
        # features of the trained layers no longer hold, so those layers always run live.
        self._live_from_start = bool(init_state is not None and init_state.get("encoder"))
        head_lr = s.head_lr if s.head_lr is not None else s.lr * s.head_lr_scale
        groups = [{"params": list(head.parameters()), "lr": head_lr}] if "head" not in freeze else []
        if trained:
            groups.append({"params": list(trained.values()), "lr": s.lr})
        if not groups:
            raise TrialError("nothing to train: the head is frozen and no encoder parameter trains")
        optimizer = torch.optim.AdamW(groups, weight_decay=s.weight_decay)
        train_idx = self.data.parts["train"]
        steps_per_epoch = math.ceil(len(train_idx) / s.batch_size)
        total = steps_per_epoch * s.num_epochs
        warmup = max(1, int(total * s.warmup_fraction))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        loss_fn = self._loss_function(train_idx, n_classes)

        history: list[dict] = []
        best = {"score": -math.inf, "epoch": 0, "state": None, "metrics": {}}
        first_epoch = 0
        if resume_dir is not None and (Path(resume_dir) / "state.pt").exists():
            ck = torch.load(Path(resume_dir) / "state.pt", weights_only=False)
            head.load_state_dict(ck["head"])
            for name, p in trained.items():
                p.data.copy_(ck["encoder"][name])
            optimizer.load_state_dict(ck["optimizer"])
            schedule.load_state_dict(ck["schedule"])
            history, best, first_epoch = ck["history"], ck["best"], ck["epoch"]
            rng = ck["rng"]
            torch.set_rng_state(ck["torch_rng"])

        for epoch in range(first_epoch, s.num_epochs):
            t0 = time.perf_counter()
            unfrozen = s.encoder_trains and epoch >= s.unfreeze_epoch
            live = boundary if (unfrozen or self._live_from_start) else None
            for p in trained.values():
                p.requires_grad_(unfrozen)
            head.train()
            self._set_encoder_mode(encoder, boundary, train=unfrozen)
            order = rng.permutation(train_idx)
            losses = []
            # A lone last clip joins the previous batch: the head's BatchNorm cannot train on one clip
            # (a training set of N = k * batch_size + 1 clips, e.g. a labelled subset in active learning).
            starts = list(range(0, len(order), s.batch_size))
            if len(starts) > 1 and len(order) - starts[-1] == 1:
                starts.pop()
            for j, b in enumerate(starts):
                idx = order[b: starts[j + 1] if j + 1 < len(starts) else len(order)]
                pooled = self._pooled(idx, feats, encoder, live, grad=unfrozen)
                loss = loss_fn(head(pooled), idx)
                if loss is None:  # no labelled clip in this batch (dimensions missing)
                    continue
                if not torch.isfinite(loss):
                    raise TrialError(f"loss became {loss.item()} at epoch {epoch + 1} (lr={s.lr:g}); trial stopped")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
            outputs = self._outputs(self.data.parts["val"], head, feats, encoder, live)
            metrics = self._metrics(self.data.parts["val"], outputs, n_classes, prefix="val_")
            score = metrics[s.objective]
            if score > best["score"]:
                best = {"score": score, "epoch": epoch + 1, "metrics": metrics,
                        "state": {"head": copy.deepcopy(head.state_dict()),
                                  "encoder": {n: p.detach().clone() for n, p in trained.items()},
                                  "encoder_trained": unfrozen}}
            self.seconds["train"] += time.perf_counter() - t0
            # Each metric at the best epoch so far (the model a trial keeps), and this epoch's own values.
            row = {"epoch": epoch + 1, **best["metrics"], **{f"epoch_{k}": v for k, v in metrics.items()},
                   "best_epoch": best["epoch"], "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   "reported_at": time.time(), "encoder_trained": unfrozen}
            history.append(row)
            if checkpoint_dir is not None:
                self._save_checkpoint(checkpoint_dir, head, trained, optimizer, schedule, history, best, epoch + 1, rng)
            if report is not None and epoch + 1 < s.num_epochs:
                report(dict(row, **self._timing()))

        result = self._finish(head, trained, feats, encoder, boundary, best, history, n_classes, fixed)
        result.num_states, result.hidden_size = num_states, dim
        if checkpoint_dir is not None:
            # The trial's last checkpoint becomes its best model in the export format; training state
            # is no longer needed once the run is complete.
            self.export(result, Path(checkpoint_dir) / "model")
            (Path(checkpoint_dir) / "state.pt").unlink(missing_ok=True)
        if report is not None:
            final = {k: v for k, v in result.test_metrics.items()}
            report(dict(history[-1], **self._timing(), **final, test_confusion=result.test_confusion,
                        trainable_params=result.trainable_params, total_params=result.total_params))
        return result

    # --- targets ----------------------------------------------------------------------------
    def _prepare_dimensions(self) -> None:
        """Dimensional targets standardised with the training clips' statistics (CCC is unchanged by
        applying the same affine map to prediction and target, so metrics are computed in this space)."""
        self._dim_names: tuple[str, ...] = ()
        if not self.s.uses_dimensions:
            return
        if self.data.dims is None:
            raise TrialError(f"task '{self.s.task}' needs arousal/valence/dominance columns; the corpus has none")
        if self.data.labelled_dims("train") == 0 or self.data.labelled_dims("val") == 0:
            raise TrialError("no clip of the train or validation speakers has dimensional labels")
        train = self.data.dims[self.data.parts["train"]]
        self._dim_names = self.data.dim_names
        self._dim_mean = np.nanmean(train, 0)
        self._dim_std = np.nanstd(train, 0) + 1e-6
        self._dims_z = (self.data.dims - self._dim_mean) / self._dim_std

    def _loss_function(self, train_idx, n_classes: int):
        s = self.s
        ce = None
        if n_classes:
            weights = None
            if s.class_weighted:
                counts = np.bincount(self.data.y[train_idx], minlength=n_classes).astype(np.float64)
                weights = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(counts), 0.0),
                                       dtype=torch.float32)
            ce = nn.CrossEntropyLoss(weight=weights)

        def loss(out: torch.Tensor, idx) -> torch.Tensor | None:
            total = None
            if ce is not None:
                total = ce(out[:, :n_classes], torch.from_numpy(self.data.y[idx]))
            if self._dim_names:
                target = torch.from_numpy(self._dims_z[idx].astype(np.float32))
                keep = torch.isfinite(target).all(1)
                if int(keep.sum()) >= 2:
                    pred = out[keep, n_classes:]
                    part = ccc_loss(pred, target[keep]) if s.dimension_loss == "ccc" else \
                        nn.functional.mse_loss(pred, target[keep])
                    part = part * (s.dimension_weight if ce is not None else 1.0)
                    total = part if total is None else total + part
            return total

        return loss

    def _metrics(self, idx, out: np.ndarray, n_classes: int, prefix: str) -> dict:
        metrics = {}
        if n_classes:
            pred = out[:, :n_classes].argmax(1)
            metrics[f"{prefix}bca"] = bca(self.data.y[idx], pred)
        if self._dim_names:
            target = self._dims_z[idx]
            keep = np.isfinite(target).all(1)
            values = [ccc(out[keep, n_classes + j], target[keep, j]) if keep.sum() >= 2 else float("nan")
                      for j in range(len(self._dim_names))]
            for name, v in zip(self._dim_names, values):
                metrics[f"{prefix}ccc_{name}"] = v
            metrics[f"{prefix}ccc"] = float(np.nanmean(values)) if keep.sum() >= 2 else float("nan")
        return metrics

    def export(self, result: "TrialResult", folder: str | Path) -> Path:
        return save_model(folder, state=result.state, encoder_spec=self.spec, labels=self.data.labels,
                          settings=self.s.to_dict(), num_states=result.num_states, hidden_size=result.hidden_size,
                          metrics={"best_epoch": result.best_epoch, **result.val_metrics, **result.test_metrics},
                          extra={"task": self.s.task, "dimensions": list(self._dim_names),
                                 "peft": self._peft.to_dict() if self._peft is not None else None,
                                 "dimension_mean": getattr(self, "_dim_mean", np.zeros(0)).tolist(),
                                 "dimension_std": getattr(self, "_dim_std", np.zeros(0)).tolist()})

    @torch.no_grad()
    def class_probabilities(self, result: "TrialResult", idx) -> np.ndarray:
        """Softmax class probabilities (len(idx), classes) of ``result``'s model (its best epoch) for the
        clips ``idx`` (rows of this tuner's data, any part), e.g. to score unlabelled clips in active
        learning. ``result`` comes from a run with this tuner's settings and encoder spec."""
        s = self.s
        if not s.uses_categories:
            raise TrialError(f"class probabilities need task 'categories' or 'both' (task is '{s.task}')")
        idx = np.asarray(idx, dtype=np.int64)
        n_classes = len(self.data.labels)
        if not hasattr(self, "_dim_names"):
            self._prepare_dimensions()
        head = EmotionHead(result.num_states, result.hidden_size, n_classes + len(self._dim_names), layer=s.layer,
                           kind=s.head, hidden=s.head_hidden, dropout=s.dropout)
        head.load_state_dict(result.state["head"])
        weights = result.state.get("encoder") or {}
        boundary = self._boundary(s.top_k) if weights else None
        feats = None
        if self.cache is not None:
            feats = self.cache.get(self.data.paths, self._wave, self.max_length, [] if boundary is None else [boundary])
        encoder = None
        if weights or feats is None:
            encoder = self._load_encoder()
            if weights and s.peft != "none" and self._peft is None:   # a fresh tuner: inject the same modules
                self._peft = PeftPlan.from_settings(s, boundary)
                apply_peft(encoder, self._peft)
            params = dict(encoder.named_parameters())
            for name, value in weights.items():
                if name not in params:
                    raise TrialError(f"the result's encoder weight {name!r} is not in {self.spec}")
                params[name].data.copy_(value)
        out = self._outputs(idx, head, feats, encoder, boundary)
        return torch.softmax(torch.from_numpy(out[:, :n_classes]).double(), dim=1).numpy()

    def _boundary(self, top_k: int | None) -> int:
        if top_k is None:
            return 0
        enc = self._load_encoder()
        return enc.num_layers - min(top_k, enc.num_layers)

    def _timing(self) -> dict:
        stats = self.cache.stats if self.cache is not None else None
        return {"load_seconds": self.seconds["load"], "encode_seconds": self.seconds["encode"],
                "train_seconds": self.seconds["train"], "cache_hits": stats.hits if stats else 0,
                "cache_misses": stats.misses if stats else 0}

    @staticmethod
    def _trainable_encoder_params(encoder: SpeechEncoder, boundary: int, top_k) -> dict[str, nn.Parameter]:
        layers = encoder.transformer_layers()
        frontend = {id(p) for m in encoder.frontend_modules() for p in m.parameters()}
        chosen = {}
        if top_k is None:  # "all": every parameter but the frozen front end
            for name, p in encoder.named_parameters():
                if id(p) not in frontend:
                    chosen[name] = p
        else:
            wanted = {id(p) for layer in layers[boundary:] for p in layer.parameters()}
            for name, p in encoder.named_parameters():
                if id(p) in wanted:
                    chosen[name] = p
        return chosen

    @staticmethod
    def _set_encoder_mode(encoder, boundary, train: bool) -> None:
        if encoder is None:
            return
        encoder.eval()
        if train and boundary is not None:
            for layer in encoder.transformer_layers()[boundary:]:
                layer.train()

    def _pooled(self, idx, feats: CachedFeatures | None, encoder, boundary: int | None, grad: bool) -> torch.Tensor:
        """Per-layer pooled features (B, L+1, D) for clips ``idx``; layers >= boundary run live (with grad
        if ``grad``), the rest come from the cache when there is one."""
        if feats is not None and boundary is None:
            return torch.from_numpy(feats.pooled[idx])
        if feats is not None:
            frames = [torch.from_numpy(np.array(feats.frames_of(boundary, int(i)))) for i in idx]
            lengths = torch.tensor([f.shape[0] for f in frames])
            hidden = nn.utils.rnn.pad_sequence(frames, batch_first=True)
            mask = torch.arange(hidden.shape[1])[None] < lengths[:, None]
            with torch.set_grad_enabled(grad):
                live = encoder.run_layers(hidden, mask, boundary)
                live_pooled = torch.stack([masked_mean(h, mask) for h in live], dim=1)
            return torch.cat([torch.from_numpy(feats.pooled[idx, : boundary + 1]), live_pooled], dim=1)
        # naive path, or "all" layers training: encode the waveforms now
        start = time.perf_counter()
        x, lengths = self._waves(idx)
        cut = encoder.num_layers if boundary is None else boundary
        with torch.no_grad():
            hidden, mask = encoder.embed(x, lengths)
            low = [hidden, *encoder.run_layers(hidden, mask, 0, cut)]
        if boundary is None or not grad:
            self.seconds["encode"] += time.perf_counter() - start
        with torch.set_grad_enabled(grad):
            high = encoder.run_layers(low[-1], mask, cut) if cut < encoder.num_layers else []
        states = low + high
        return torch.stack([masked_mean(h, mask) for h in states], dim=1)

    @torch.no_grad()
    def _outputs(self, idx, head, feats, encoder, boundary) -> np.ndarray:
        """Raw head outputs (class logits, then standardised dimensions) for clips ``idx``."""
        head.eval()
        self._set_encoder_mode(encoder, boundary, train=False)
        outs = []
        batch = max(self.s.batch_size, 32)
        with torch.no_grad():
            for b in range(0, len(idx), batch):
                part = idx[b: b + batch]
                outs.append(head(self._pooled(part, feats, encoder, boundary, grad=False)))
        return torch.cat(outs).numpy() if outs else np.zeros((0, head.classifier_outputs))

    def _finish(self, head, trained, feats, encoder, boundary, best, history, n_classes, fixed=None) -> TrialResult:
        state = best["state"]
        head.load_state_dict(state["head"])
        for name, p in trained.items():
            p.data.copy_(state["encoder"][name])
        # With PEFT the encoder weights are always exported: small, and the model folder re-injects them.
        changed = state["encoder_trained"] or self._live_from_start or self._peft is not None
        live_boundary = boundary if (state["encoder_trained"] or self._live_from_start) else None
        test_idx = self.data.parts["test"]
        test_metrics, test_conf, preds = {}, None, None
        if len(test_idx):
            t0 = time.perf_counter()
            out = self._outputs(test_idx, head, feats, encoder, live_boundary)
            test_metrics = self._metrics(test_idx, out, n_classes, prefix="test_")
            if n_classes:
                preds = out[:, :n_classes].argmax(1)
                y = self.data.y[test_idx]
                test_metrics["test_accuracy"] = float((preds == y).mean())
                test_conf = confusion(y, preds, n_classes)
            self.seconds["train"] += time.perf_counter() - t0
        n_train = sum(p.numel() for p in head.parameters() if p.requires_grad) + sum(p.numel() for p in trained.values())
        n_total = sum(p.numel() for p in head.parameters()) + (
            sum(p.numel() for p in encoder.parameters()) if encoder is not None else 0)
        encoder_state = {**{n: p.detach().clone() for n, p in (fixed or {}).items()}, **state["encoder"]}
        export_state = {"head": state["head"], "encoder": encoder_state if changed else {}}
        cache_stats = {"hits": self.cache.stats.hits, "misses": self.cache.stats.misses} if self.cache else {}
        return TrialResult(val_bca=best["metrics"].get("val_bca"), best_epoch=best["epoch"],
                           test_bca=test_metrics.get("test_bca"), test_accuracy=test_metrics.get("test_accuracy"),
                           test_confusion=test_conf, history=history,
                           seconds=dict(self.seconds), cache=cache_stats, trainable_params=n_train,
                           total_params=n_total, state=export_state, settings=self.s.to_dict(),
                           test_predictions=preds, val_metrics=dict(best["metrics"]), test_metrics=test_metrics)

    @staticmethod
    def _save_checkpoint(folder, head, trained, optimizer, schedule, history, best, epoch, rng):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "state.pt.tmp"
        torch.save({"head": head.state_dict(), "encoder": {n: p.detach() for n, p in trained.items()},
                    "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "history": history,
                    "best": best, "epoch": epoch, "rng": rng, "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(folder / "state.pt")
