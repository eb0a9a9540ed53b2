"""One fine-tuning run: the unit every search strategy repeats.

Epochs before ``unfreeze_epoch`` train only the head; later epochs also train the encoder's top
``k`` layers (or all of them). With ``features: cache`` frozen layers come from the study's
feature cache, so head epochs cost only the head and top-k epochs run only the top layers;
with ``features: naive`` every epoch re-encodes every clip (the reference code's way), kept
for the benchmark. A head that reads frames (``head: attentive``) reads every layer's cached frames,
memory-mapped, a padded batch with a mask at a time; its training batches are augmented as its settings
say (``augment.py``), its validation and test batches never. Each epoch reports validation BCA; the best epoch's model is evaluated once
on the test speakers at the end.
``FineTuner`` is shaped like a SpeechBrain ``Brain``: ``forward``, ``objective``, ``fit_batch``,
``fit_epoch``, ``evaluate``, ``keep_epoch``, ``save_state`` and ``finish`` are its named steps;
``run`` strings them together, and a caller may drive them itself (several tuners in lockstep).
With ``peft`` (LoRA, bottleneck adapters; see ``peft.py``) the same top layers get new modules
instead: only those and the head train, the pretrained weights stay as they are.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from ..data import SAMPLE_RATE, AudioStore, crop, pad_batch
from ..data.corpus import DIMENSIONS
from ..encoders import SpeechEncoder, load_encoder, spec_fingerprint
from ..encoders.base import average_in_time, lengths_to_mask
from ..encoders.cache import CachedFeatures, FeatureCache, effective_max_length
from ..encoders.precision import compute, resolve as resolve_precision
from .augment import augment_frames, mixup_pairs
from .export import cut_at_read_layer, save_model
from .head import AttentiveHead, frame_moments, load_fitted, make_head, pool_states, stack_statistics
from .metrics import class_probabilities_of
from .normalize import FeatureNorm
from .peft import PeftPlan, apply_peft, check_peft_settings, start_from
from .settings import FITTED_HEADS, TrialSettings
from .targets import Loss, Targets

STATE_FILE = "state.pt"  # a trial's resumable epoch state, in its checkpoint folder


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then half a cosine down to 0 at ``total``: the schedule of
    transformers' ``get_cosine_schedule_with_warmup``, step for step. Written here because importing
    transformers costs every Ray worker about 6 CPU-seconds before its first trial, and a study starts
    new workers for every unit of work."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fused_adamw_applies(params) -> bool:
    """Whether torch's fused AdamW kernel can step ``params`` (floating point, on CPU or CUDA). On one CPU
    core it stepped the MLP head on all layers' mean+std (1.8M parameters) 2.7x faster than the default
    per-tensor loop, its weights within float rounding of the loop's (bench/optimizer_step.py, BENCHMARKS.md)."""
    params = list(params)
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


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
    speakers: np.ndarray | None = field(default=None, repr=False)   # each clip's speaker (normalisation)

    def labelled_dims(self, part: str) -> int:
        """Clips of a part with every dimensional label (the others are excluded from CCC and its loss)."""
        if self.dims is None:
            return 0
        return int(np.isfinite(self.dims[self.parts[part]]).all(1).sum())

    @classmethod
    def from_table(cls, table: pd.DataFrame, assignment: pd.Series, labels: list[str] | None = None,
                   audio: AudioStore | None = None, *, refit: bool = False) -> "TrialData":
        """The clips of ``table`` in the parts of ``assignment``. ``refit``: a run for a fixed number of
        epochs on every clip it may use, with no validation speakers: the train clips stand in for them
        (the epoch is not chosen on them)."""
        labels = list(labels) if labels is not None else sorted(table["label"].unique())
        index = {name: i for i, name in enumerate(labels)}
        missing = sorted(set(table["label"]) - set(index))
        if missing:
            raise TrialError(f"labels {missing} are not in the label list {labels}")
        parts = {p: np.flatnonzero(assignment.reindex(table.index).to_numpy() == p) for p in ("train", "val", "test")}
        if refit:
            parts["val"] = parts["train"]
        for p in ("train", "val"):
            if not len(parts[p]):
                raise TrialError(f"the split has no '{p}' clips")
        dim_names = tuple(d for d in DIMENSIONS if d in table and table[d].notna().any())
        dims = table[list(dim_names)].to_numpy(np.float32) if dim_names else None
        return cls(paths=[str(p) for p in table["path"]], durations=table["duration"].to_numpy(float),
                   y=table["label"].map(index).to_numpy(np.int64), labels=labels, parts=parts,
                   audio=audio or AudioStore(SAMPLE_RATE), dims=dims, dim_names=dim_names,
                   speakers=table["speaker"].astype(str).to_numpy() if "speaker" in table else None)


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
    # (test clips, classes) softmax probabilities of the kept model, in the order of data.parts["test"]
    test_probabilities: np.ndarray | None = field(default=None, repr=False)
    num_states: int = 0
    hidden_size: int = 0
    val_metrics: dict = field(default_factory=dict)    # every validation metric at the best epoch
    test_metrics: dict = field(default_factory=dict)   # every test metric of the best epoch's model

    def metrics(self) -> dict:
        return {"val_bca": self.val_bca, "best_epoch": self.best_epoch, "test_bca": self.test_bca,
                "test_accuracy": self.test_accuracy, "trainable_params": self.trainable_params,
                "total_params": self.total_params, **{f"{k}_seconds": v for k, v in self.seconds.items()},
                **{f"cache_{k}": v for k, v in self.cache.items()}}


@dataclass
class TrialModel:
    """What turns clips into head outputs: the head, the encoder when any layer runs live, and the
    cached features (None on the naive path, which encodes every batch)."""
    head: nn.Module                  # an EmotionHead, or an AttentiveHead (reads frames)
    encoder: SpeechEncoder | None
    feats: CachedFeatures | None


@dataclass
class EpochOutcome:
    """The last epoch ``fit_epoch`` trained: its validation metrics, mean training loss and whether the
    encoder trained in it."""
    metrics: dict
    train_loss: float
    encoder_trained: bool


@dataclass
class FitState:
    """A fine-tuning in progress (from ``FineTuner.start``), advanced one epoch at a time by ``fit_epoch``."""
    model: TrialModel
    boundary: int | None                     # lowest trained encoder layer; None when no encoder layer trains
    trained: dict[str, nn.Parameter]         # encoder parameters the optimiser updates once unfrozen
    fixed: dict[str, nn.Parameter]           # encoder parameters taken from init_state and kept fixed
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loss: Loss
    rng: np.random.Generator                 # the training clips' order, epoch by epoch
    torch_rng: torch.Tensor                  # this run's own torch RNG state (dropout), see FineTuner._own_rng
    live_from_start: bool                    # encoder weights differ from the cached features' from epoch 1
    num_epochs: int
    hidden_size: int                         # the encoder's feature width
    epoch: int = 0                           # epochs trained so far
    history: list[dict] = field(default_factory=list)
    # The kept epoch: its objective score, number, validation metrics and weights (see keep_epoch).
    best: dict = field(default_factory=lambda: {"score": -math.inf, "epoch": 0, "state": None, "metrics": {}})
    last: EpochOutcome | None = None         # the epoch fit_epoch trained last (None right after start)

    @property
    def done(self) -> bool:
        return self.epoch >= self.num_epochs

    @property
    def num_states(self) -> int:
        return self.model.head.num_states


class FineTuner:
    """One trial's fine-tuning, in the shape of a SpeechBrain ``Brain``.

    Steps: ``forward`` (pooled features -> head outputs), ``objective`` (the loss), ``fit_batch``,
    ``fit_epoch`` (one epoch of batches, then ``evaluate`` on the validation part), ``keep_epoch``
    (the epoch whose model ``finish`` returns), ``save_state`` (what ``start(resume_dir=...)``
    continues from) and ``finish`` (the kept epoch's model and its test metrics). ``run`` strings
    them together, keeping the epoch with the best validation objective. A caller may drive the
    steps itself, e.g. one tuner per cross-validation fold in lockstep, choosing the epoch on
    the folds' mean::

        states = [tuner.start() for tuner in tuners]
        best = -math.inf
        for _ in range(num_epochs):
            scores = [tuner.fit_epoch(state)["val_bca"] for tuner, state in zip(tuners, states)]
            if np.mean(scores) > best:
                best = np.mean(scores)
                for tuner, state in zip(tuners, states):
                    tuner.keep_epoch(state)
        results = [tuner.finish(state) for tuner, state in zip(tuners, states)]
    """

    def __init__(self, settings: TrialSettings, data: TrialData, *, encoder_spec: str,
                 cache_root: str | Path | None = None,
                 encoder_loader: Callable[[str], SpeechEncoder] = load_encoder):
        settings.validate()  # also settles the default objective for the task
        if settings.encoder is not None and settings.encoder != encoder_spec:
            raise TrialError(f"trial setting 'encoder' = {settings.encoder!r}, but this run encodes with "
                             f"{encoder_spec!r}; only a strategy study searches among encoders")
        if settings.peft != "none":
            check_peft_settings(settings)  # before any encoding: a bad lora_targets fails at once
        self.s = settings
        self.data = data
        self.spec = encoder_spec
        self._encoder: SpeechEncoder | None = None
        self._encoder_loader = encoder_loader
        self._targets: Targets | None = None
        self.seconds = {"load": 0.0, "encode": 0.0, "train": 0.0}
        self.max_length = effective_max_length(settings.max_length, data.durations)
        self.precision = resolve_precision(settings.precision)   # of the encoder's layers, cached and trained
        self.cache = None
        self._peft: PeftPlan | None = None
        self._norm: FeatureNorm | None = None
        self._statistics: tuple[CachedFeatures, np.ndarray] | None = None
        self._head_input: tuple[CachedFeatures, np.ndarray] | None = None
        self._feats: CachedFeatures | None = None
        if settings.features == "cache":
            if cache_root is None:
                raise TrialError("features: cache needs a cache folder")
            self.cache = FeatureCache(cache_root, encoder_spec, spec_fingerprint(encoder_spec), self._load_encoder,
                                      precision=self.precision)
        elif settings.normalize != "none":
            raise TrialError(f"normalize: {settings.normalize} takes its statistics from the cached features; "
                             "it needs 'features: cache'")

    # --- inputs ------------------------------------------------------------------------------
    def _load_encoder(self) -> SpeechEncoder:
        if self._encoder is None:
            start = time.perf_counter()
            self._encoder = self._encoder_loader(self.spec)
            self.seconds["load"] += time.perf_counter() - start
            if self._encoder.sample_rate != SAMPLE_RATE:
                raise TrialError(f"{self.spec}: expects {self._encoder.sample_rate} Hz audio; only {SAMPLE_RATE} is supported")
        return self._encoder

    def clip_wave(self, i: int) -> np.ndarray:
        """Clip ``i``'s waveform as the encoder sees it (cropped to ``max_length``)."""
        return crop(self.data.audio.get(self.data.paths[i]), self.max_length, SAMPLE_RATE)

    def _waves(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_batch([self.clip_wave(int(i)) for i in idx])

    @property
    def norm(self) -> FeatureNorm | None:
        """The feature normalisation of ``settings.normalize`` (see ``training.normalize``), its
        statistics from the frozen encoder's cached features of this tuner's clips."""
        if self._norm is None and self.s.normalize != "none":
            self._norm = FeatureNorm.fit(self.s.normalize, self.statistics(self.cached_features()),
                                         speakers=self.data.speakers, rows=self.data.parts["train"])
        return self._norm

    def statistics(self, feats: CachedFeatures) -> np.ndarray:
        """The cached per-layer statistics the head reads, (N, L+1, D'): ``feats``' mean, or its mean and
        standard deviation side by side (``pooling: meanstd``); made once per entry."""
        if self._statistics is None or self._statistics[0] is not feats:
            pooling = "mean" if self.s.reads_frames else self.s.pooling   # frames are normalised by their means'
            self._statistics = (feats, stack_statistics(feats.pooled, feats.pooled_std, pooling))
        return self._statistics[1]

    def normalised_statistics(self, feats: CachedFeatures) -> np.ndarray:
        """``statistics`` normalised as ``settings.normalize`` says, every clip at once: made once per entry, so
        that a head on frozen features reads each batch's rows instead of normalising them again at every step
        (the same float32 arithmetic per element)."""
        if self._head_input is None or self._head_input[0] is not feats:
            stats = self.statistics(feats)
            self._head_input = (feats, stats if self.norm is None else self.norm.apply(stats, np.arange(len(stats))))
        return self._head_input[1]

    def cached_features(self) -> CachedFeatures:
        """The feature cache's entry for this tuner's clips: every layer's pooled features and, when the
        encoder trains, the input of the lowest trained layer ("all": the frozen front end's output); for a
        head that reads frames, every layer's frames averaged over ``frame_average``. Encodes what is
        missing; needs ``features: cache``."""
        if self.cache is None:
            raise TrialError("cached features need 'features: cache'")
        if self._feats is None:   # one look-up per tuner (a hit or the encode), however many steps read it
            boundaries = [self._boundary(self.s.top_k)] if self.s.encoder_trains else []
            self._feats = self.cache.get(self.data.paths, self.clip_wave, self.max_length, boundaries,
                                         averages=self._frame_averages())
        return self._feats

    def _frame_averages(self) -> list[int]:
        return [self.s.frame_average] if self.s.reads_frames else []

    def frame_statistics(self, feats: CachedFeatures) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (L+1, D) of the training clips' frames as the head reads them
        (normalised as ``settings.normalize`` says), from the cache's per-clip frame statistics."""
        rows = self.data.parts["train"]
        mean, std = feats.pooled[rows], feats.pooled_std[rows]
        if self.norm is not None:
            shift, scale = self.norm.shift_scale(rows)
            mean, std = (mean - shift) / scale, std / scale
        return frame_moments(mean, std, feats.lengths[rows])

    @property
    def targets(self) -> Targets:
        """The head's outputs, loss and metrics for this tuner's clips (dimensions standardised on train)."""
        if self._targets is None:
            if self.s.uses_dimensions:
                self._check_dimension_labels()
            self._targets = Targets(self.s, self.data)
        return self._targets

    def _check_dimension_labels(self) -> None:
        if self.data.dims is None:
            raise TrialError(f"task '{self.s.task}' needs arousal/valence/dominance columns; the corpus has none")
        if self.data.labelled_dims("train") == 0 or self.data.labelled_dims("val") == 0:
            raise TrialError("no clip of the train or validation speakers has dimensional labels")

    # --- the run -----------------------------------------------------------------------------
    def run(self, report: Callable[[dict], None] | None = None, checkpoint_dir: str | Path | None = None,
            resume_dir: str | Path | None = None, *, init_state: dict | None = None,
            freeze: Sequence[str] = ()) -> TrialResult:
        """Train and evaluate, keeping the epoch with the best validation objective. ``report`` gets each
        epoch's history row (the last one with the test metrics); ``checkpoint_dir`` receives the epoch
        state after every epoch and the exported model at the end; ``resume_dir`` continues from its
        epoch state. ``init_state`` and ``freeze``: see ``start``."""
        state = self.start(init_state=init_state, freeze=freeze, resume_dir=resume_dir)
        while not state.done:
            metrics = self.fit_epoch(state)
            if metrics[self.s.objective] > state.best["score"]:
                self.keep_epoch(state)
            if checkpoint_dir is not None:
                self.save_state(state, checkpoint_dir)
            if report is not None and not state.done:
                report(dict(state.history[-1], **self.timing()))
        result = self.finish(state)
        if checkpoint_dir is not None:
            # The trial's last checkpoint becomes its best model in the export format; training state
            # is no longer needed once the run is complete.
            self.export(result, Path(checkpoint_dir) / "model")
            (Path(checkpoint_dir) / STATE_FILE).unlink(missing_ok=True)
        if report is not None:
            report(dict(state.history[-1], **self.timing(), **result.test_metrics, test_confusion=result.test_confusion,
                        trainable_params=result.trainable_params, total_params=result.total_params))
        return result

    def start(self, init_state: dict | None = None, freeze: Sequence[str] = (),
              resume_dir: str | Path | None = None) -> FitState:
        """The model, optimiser and schedule before the first epoch (or at the epoch state saved in
        ``resume_dir``, when it holds one). ``init_state`` ({"encoder": {name: tensor}, "head": state
        dict or None}, e.g. another trial's ``result.state``) starts from those weights; ``freeze`` keeps
        groups of them fixed ("lora", "adapter", "head"; see ``peft.start_from``)."""
        s = self.s
        with torch.random.fork_rng(devices=[]):   # seeded here, the caller's torch RNG left as it was
            torch.manual_seed(s.seed)
            feats: CachedFeatures | None = None
            if self.cache is not None:
                feats = self.cached_features()
                self.seconds["encode"] += self.cache.stats.encode_seconds
                num_states, dim = (feats.pooled if s.reads_frames else self.statistics(feats)).shape[1:]
            else:
                enc = self._load_encoder()
                num_states, dim = enc.num_layers + 1, enc.hidden_size * (2 if s.pooling == "meanstd" else 1)
            boundary = None
            if s.encoder_trains:
                boundary = 0 if s.top_k is None else (num_states - 1) - min(s.top_k, num_states - 1)
            encoder = self._load_encoder() if (s.encoder_trains or feats is None) else None
            head = make_head(s, num_states, dim, self.targets.outputs)
            if isinstance(head, AttentiveHead):
                head.set_statistics(*self.frame_statistics(feats))
            trained = self._encoder_parameters(encoder, boundary)
            fixed: dict[str, nn.Parameter] = {}
            if init_state is not None:
                trained, fixed = start_from(init_state, encoder=encoder if s.encoder_trains else None, head=head,
                                            trained=trained, freeze=freeze)
            torch_rng = torch.get_rng_state()
        optimizer, schedule = self._optimizer(head, trained, freeze)
        state = FitState(model=TrialModel(head, encoder, feats), boundary=boundary, trained=trained, fixed=fixed,
                         optimizer=optimizer, schedule=schedule,
                         loss=self.targets.loss_function(self.data.parts["train"]),
                         rng=np.random.default_rng(s.seed), torch_rng=torch_rng,
                         # Encoder weights that differ from the pretrained ones from the start: the cache's
                         # pooled features of the trained layers no longer hold, so those layers run live.
                         # So do trained layers that read frames averaged in time (``frame_average``): the
                         # head sees the features the exported model computes from the first epoch on.
                         live_from_start=bool(init_state is not None and init_state.get("encoder"))
                         or s.averages_trained_frames,
                         # a logistic regression is fitted to convergence once: one "epoch"
                         num_epochs=1 if s.head in FITTED_HEADS else s.num_epochs, hidden_size=dim)
        if resume_dir is not None and (Path(resume_dir) / STATE_FILE).exists():
            self._restore(state, Path(resume_dir) / STATE_FILE)
        return state

    def _encoder_parameters(self, encoder: SpeechEncoder | None, boundary: int | None) -> dict[str, nn.Parameter]:
        """The encoder parameters that train: new PEFT modules on the trained layers (their original
        weights stay frozen), or the trained layers' own weights."""
        s = self.s
        if encoder is None or not s.encoder_trains:
            return {}
        if s.peft != "none":
            self._peft = PeftPlan.from_settings(s, boundary)
            return apply_peft(encoder, self._peft)
        return self._trainable_encoder_params(encoder, boundary, s.top_k)

    def _optimizer(self, head: nn.Module, trained: dict[str, nn.Parameter], freeze: Sequence[str]):
        """AdamW over the head (unless frozen) and the trained encoder parameters; the learning rate warms
        up linearly over ``warmup_fraction`` of all epochs' steps, then decays to 0 along a half cosine."""
        s = self.s
        head_lr = s.head_lr if s.head_lr is not None else s.lr * s.head_lr_scale
        groups = [{"params": list(head.parameters()), "lr": head_lr}] if "head" not in freeze else []
        if trained:
            groups.append({"params": list(trained.values()), "lr": s.lr})
        if not groups:
            raise TrialError("nothing to train: the head is frozen and no encoder parameter trains")
        optimizer = torch.optim.AdamW(groups, weight_decay=s.weight_decay,
                                      fused=fused_adamw_applies(p for g in groups for p in g["params"]))
        total = len(self._batches(self.data.parts["train"])) * s.num_epochs   # optimiser steps of the run
        return optimizer, warmup_cosine(optimizer, int(total * s.warmup_fraction), total)

    # --- one epoch ---------------------------------------------------------------------------
    def fit_epoch(self, state: FitState) -> dict:
        """Train ``state`` one epoch, then evaluate the validation part; returns that epoch's validation
        metrics ({"val_bca": ...} and/or {"val_ccc": ...}). The epoch joins ``state.history``; call
        ``keep_epoch`` next to make its model the one ``finish`` returns."""
        if state.done:
            raise TrialError(f"all {state.num_epochs} epochs are trained already")
        start = time.perf_counter()
        unfrozen = self._encoder_trains_in(state.epoch)
        live = self._live_boundary(state, state.epoch)
        for p in state.trained.values():
            p.requires_grad_(unfrozen)
        if self.s.head in FITTED_HEADS:
            losses = [self.fit_sklearn_head(state)]
        else:
            state.model.head.train()
            self._set_encoder_mode(state.model.encoder, state.boundary, train=unfrozen)
            with self._own_rng(state):
                losses = [loss for idx in self._batches(state.rng.permutation(self.data.parts["train"]))
                          if (loss := self.fit_batch(state, idx, live, grad=unfrozen)) is not None]
        state.epoch += 1
        metrics = self.evaluate(state, "val")
        state.last = EpochOutcome(metrics, float(np.mean(losses)) if losses else float("nan"), unfrozen)
        self.seconds["train"] += time.perf_counter() - start
        self._record_epoch(state)
        return metrics

    def fit_sklearn_head(self, state: FitState) -> float:
        """``head: logreg`` or ``lda`` (``training.fitted``): fitted once by scikit-learn (the logistic
        regression to convergence, as the probe's is) on what the head reads of the training clips'
        (normalised) cached statistics, written into the head (``head.load_fitted``). Returns its training
        log-loss."""
        head, train = state.model.head, self.data.parts["train"]
        features = self.pooled(state.model, train, None, grad=False)
        x = head.read(features).numpy().reshape(len(train), -1)
        y = self.data.y[train]
        with threadpool_limits(limits=torch.get_num_threads()):   # the trial's CPUs, not the machine's
            from .fitted import fit_head   # late: scikit-learn loads only in a fitted head's trial

            model = fit_head(self.s.head, x, y, C=self.s.C, shrinkage=self.s.shrinkage, seed=self.s.seed,
                             class_weighted=self.s.class_weighted)
            load_fitted(head, model, features.shape[-1])
            probabilities = model.predict_proba(x)[np.arange(len(y)), np.searchsorted(model[-1].classes_, y)]
        return float(-np.mean(np.log(np.clip(probabilities, 1e-12, None))))

    @staticmethod
    @contextmanager
    def _own_rng(state: FitState):
        """Run with ``state``'s own torch RNG (dropout): tuners trained in lockstep in one process draw
        the same numbers as each one alone, and a resumed run continues its own stream."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(state.torch_rng)
            yield
            state.torch_rng = torch.get_rng_state()

    def _batches(self, order: np.ndarray) -> list[np.ndarray]:
        # A lone last clip joins the previous batch: the head's BatchNorm cannot train on one clip
        # (a training set of N = k * batch_size + 1 clips, e.g. a labelled subset in active learning).
        starts = list(range(0, len(order), self.s.batch_size))
        if len(starts) > 1 and len(order) - starts[-1] == 1:
            starts.pop()
        return [order[b: starts[j + 1] if j + 1 < len(starts) else len(order)] for j, b in enumerate(starts)]

    def fit_batch(self, state: FitState, idx: np.ndarray, live: int | None, grad: bool) -> float | None:
        """One optimiser step on clips ``idx`` (training clips: augmented as the settings say, see
        ``augment.py``); returns the loss (None: no labelled clip in the batch)."""
        outputs, mix = self.augmented_forward(state.model, idx, live, grad)
        loss = self.objective(state, outputs, idx)
        if mix is not None and loss is not None:   # mixup: each row's loss against both clips' targets
            order, lam = mix
            loss = lam * loss + (1.0 - lam) * self.objective(state, outputs, idx[order])
        if loss is None:
            return None
        if not torch.isfinite(loss):
            raise TrialError(f"loss became {loss.item()} at epoch {state.epoch + 1} (lr={self.s.lr:g}); trial stopped")
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in state.optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.s.grad_clip)
        state.optimizer.step()
        state.schedule.step()
        return loss.item()

    def forward(self, model: TrialModel, idx, live: int | None, grad: bool) -> torch.Tensor:
        """Head outputs (class logits, then standardised dimensions) for clips ``idx``."""
        if isinstance(model.head, AttentiveHead):
            return model.head(*self.frame_batch(model.feats, idx))
        return model.head(self.pooled(model, idx, live, grad))

    def augmented_forward(self, model: TrialModel, idx, live: int | None, grad: bool):
        """``forward`` for training clips ``idx``, with a head that reads frames augmented as the settings
        say: (outputs, mixup's (row order, weight) or None)."""
        head = model.head
        if not isinstance(head, AttentiveHead):
            return self.forward(model, idx, live, grad), None
        frames, mask = augment_frames(*self.frame_batch(model.feats, idx), self.s, head.frame_std)
        pooled = head.pool(frames, mask)
        mix = mixup_pairs(len(idx), self.s.mixup)
        if mix is not None:
            order, lam = mix
            pooled = lam * pooled + (1.0 - lam) * pooled[torch.from_numpy(order)]
        return head.classify(pooled), mix

    def frame_batch(self, feats: CachedFeatures, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's cached frames of clips ``idx``, padded: (B, T, L+1, D) float32 (normalised as
        ``settings.normalize`` says) and the mask of real frames (B, T)."""
        clips = [torch.from_numpy(np.asarray(feats.clip_frames(self.s.frame_average, int(i)), dtype=np.float32))
                 for i in idx]
        lengths = torch.tensor([len(c) for c in clips])
        frames = nn.utils.rnn.pad_sequence(clips, batch_first=True)
        mask = torch.arange(frames.shape[1])[None] < lengths[:, None]
        return (frames if self.norm is None else self.norm.apply_frames(frames, idx)), mask

    @staticmethod
    def objective(state: FitState, outputs: torch.Tensor, idx) -> torch.Tensor | None:
        """The training loss of ``outputs`` for clips ``idx`` (None when none of them has a label to learn)."""
        return state.loss(outputs, idx)

    def evaluate(self, state: FitState, part: str = "val") -> dict:
        """Metrics of the current model (the last epoch trained) on a part ("val", "test"), prefixed
        with the part's name."""
        idx = self.data.parts[part]
        live = self._live_boundary(state, state.epoch - 1)
        return self.targets.metrics(idx, self._outputs(state.model, idx, live), prefix=f"{part}_")

    def _encoder_trains_in(self, epoch: int) -> bool:
        """Whether the encoder trains in epoch ``epoch`` (counted from 0)."""
        return self.s.encoder_trains and epoch >= self.s.unfreeze_epoch

    def _live_boundary(self, state: FitState, epoch: int) -> int | None:
        """From which layer on the encoder runs live in epoch ``epoch``: the trained layers once they train
        or differ from the cached ones; None when every feature comes from the cache."""
        return state.boundary if (self._encoder_trains_in(epoch) or state.live_from_start) else None

    def keep_epoch(self, state: FitState) -> None:
        """Keep the model of the epoch ``fit_epoch`` just trained: ``finish`` returns it (unless a later
        epoch is kept). ``run`` keeps the epoch with the best validation objective; a caller driving
        several tuners may keep whichever epoch it chooses, e.g. the best on the folds' mean."""
        last = state.last
        if last is None:
            raise TrialError("keep_epoch: no epoch was trained since start (call fit_epoch first)")
        start = time.perf_counter()
        state.best = {"score": last.metrics[self.s.objective], "epoch": state.epoch,
                      "metrics": last.metrics,
                      "state": {"head": copy.deepcopy(state.model.head.state_dict()),
                                "encoder": {n: p.detach().clone() for n, p in state.trained.items()},
                                "encoder_trained": last.encoder_trained}}
        self.seconds["train"] += time.perf_counter() - start
        self._record_epoch(state)

    def _record_epoch(self, state: FitState) -> dict:
        """The last epoch's history row: each metric at the kept epoch so far (the model a trial keeps),
        then this epoch's own values (``epoch_`` prefix)."""
        last, best = state.last, state.best
        row = {"epoch": state.epoch, **best["metrics"], **{f"epoch_{k}": v for k, v in last.metrics.items()},
               "best_epoch": best["epoch"], "train_loss": last.train_loss, "reported_at": time.time(),
               "encoder_trained": last.encoder_trained}
        if state.history and state.history[-1]["epoch"] == state.epoch:
            state.history[-1] = row   # keep_epoch after fit_epoch: the same epoch, now kept
        else:
            state.history.append(row)
        return row

    # --- checkpoint --------------------------------------------------------------------------
    def save_state(self, state: FitState, folder: str | Path) -> Path:
        """Write what ``start(resume_dir=folder)`` continues from to ``folder/state.pt``, atomically.
        Only tensors and plain values (the numpy generator as its state dict): the file lives on shared
        storage, and reading it back must not be able to run code."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (STATE_FILE + ".tmp")
        torch.save({"head": state.model.head.state_dict(), "encoder": {n: p.detach() for n, p in state.trained.items()},
                    "optimizer": state.optimizer.state_dict(), "schedule": state.schedule.state_dict(),
                    "history": state.history, "best": state.best, "epoch": state.epoch,
                    "rng": state.rng.bit_generator.state, "torch_rng": state.torch_rng}, tmp)
        tmp.replace(folder / STATE_FILE)
        return folder / STATE_FILE

    @staticmethod
    def _restore(state: FitState, path: Path) -> None:
        """``state`` as saved in ``path``; a TrialError naming the file when it is not such a state."""
        try:
            ck = torch.load(path, weights_only=True)   # tensors and plain values only: no code runs
        except Exception as err:   # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
            raise TrialError(f"{path}: not a trial state this version wrote ({type(err).__name__}; it may hold "
                             "more than tensors and plain values, and was not loaded); delete it to restart "
                             "the trial") from None
        try:
            _check_tensors(ck["head"], state.model.head.state_dict())
            _check_tensors(ck["encoder"], state.trained)
            if ck["best"]["state"] is not None:
                _check_tensors(ck["best"]["state"]["head"], state.model.head.state_dict())
                _check_tensors(ck["best"]["state"]["encoder"], state.trained)
            state.model.head.load_state_dict(ck["head"])
            for name, p in state.trained.items():
                p.data.copy_(ck["encoder"][name])
            state.optimizer.load_state_dict(ck["optimizer"])
            state.schedule.load_state_dict(ck["schedule"])
            state.rng.bit_generator.state = ck["rng"]
            state.torch_rng = torch.as_tensor(ck["torch_rng"], dtype=torch.uint8)
            state.history, state.best, state.epoch = list(ck["history"]), dict(ck["best"]), int(ck["epoch"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
            why = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise TrialError(f"{path}: does not fit this trial ({type(err).__name__}: {why}); delete it to "
                             "restart the trial") from None

    # --- the end -----------------------------------------------------------------------------
    def finish(self, state: FitState) -> TrialResult:
        """The kept epoch's model, evaluated once on the test part."""
        kept = state.best["state"]
        if kept is None:
            raise TrialError(f"no epoch was kept: the validation {self.s.objective} was never a number")
        head, encoder = state.model.head, state.model.encoder
        head.load_state_dict(kept["head"])
        for name, p in state.trained.items():
            p.data.copy_(kept["encoder"][name])
        encoder_live = kept["encoder_trained"] or state.live_from_start
        test_idx = self.data.parts["test"]
        test_metrics, test_conf, preds, probabilities = {}, None, None, None
        if len(test_idx):
            t0 = time.perf_counter()
            out = self._outputs(state.model, test_idx, state.boundary if encoder_live else None)
            test_metrics, test_conf, preds = self.targets.test_scores(test_idx, out)
            if self.targets.n_classes:
                probabilities = class_probabilities_of(out[:, :self.targets.n_classes])
            self.seconds["train"] += time.perf_counter() - t0
        n_train = sum(p.numel() for p in head.parameters() if p.requires_grad) + sum(
            p.numel() for p in state.trained.values())
        n_total = sum(p.numel() for p in head.parameters()) + (
            sum(p.numel() for p in encoder.parameters()) if encoder is not None else 0)
        # With PEFT the encoder weights are always exported: small, and the model folder re-injects them.
        changed = encoder_live or self._peft is not None
        encoder_state = {**{n: p.detach().clone() for n, p in state.fixed.items()}, **kept["encoder"]}
        cache_stats = {"hits": self.cache.stats.hits, "misses": self.cache.stats.misses} if self.cache else {}
        best = state.best
        return TrialResult(val_bca=best["metrics"].get("val_bca"), best_epoch=best["epoch"],
                           test_bca=test_metrics.get("test_bca"), test_accuracy=test_metrics.get("test_accuracy"),
                           test_confusion=test_conf, history=state.history, seconds=dict(self.seconds),
                           cache=cache_stats, trainable_params=n_train, total_params=n_total,
                           state={"head": kept["head"], "encoder": encoder_state if changed else {},
                                  "norm": self.norm.tensors() if self.norm is not None else {}},
                           settings=self.s.to_dict(), test_predictions=preds, test_probabilities=probabilities,
                           num_states=state.num_states,
                           hidden_size=state.hidden_size,
                           val_metrics=dict(best["metrics"]), test_metrics=test_metrics)

    def export(self, result: "TrialResult", folder: str | Path, *, source: dict | None = None) -> Path:
        """The model folder of ``result``. ``source`` ({name, root, label_map, options, train_speakers}):
        the corpus and speakers it trained on, which cross-corpus evaluation's frozen-feature baseline
        trains on too."""
        targets = self.targets
        cut = cut_at_read_layer(result.state, self.s.to_dict(), result.num_states, result.hidden_size,
                                encoder=self._encoder, peft=self._peft.to_dict() if self._peft is not None else None)
        return save_model(folder, state=cut.state, encoder_spec=self.spec, labels=self.data.labels,
                          settings=cut.settings, num_states=cut.num_states, hidden_size=result.hidden_size,
                          metrics={"best_epoch": result.best_epoch, **result.val_metrics, **result.test_metrics},
                          extra={"task": self.s.task, "dimensions": list(targets.dim_names), "peft": cut.peft,
                                 "encoder_layers": cut.encoder_layers,
                                 "average_frames_from": self._averaged_from(cut.encoder_layers),
                                 "dimension_mean": targets.dim_mean.tolist(),
                                 "dimension_std": targets.dim_std.tolist(), "source": source})

    @torch.no_grad()
    def class_probabilities(self, result: "TrialResult", idx) -> np.ndarray:
        """Softmax class probabilities (len(idx), classes) of ``result``'s model (its best epoch) for the
        clips ``idx`` (rows of this tuner's data, any part), e.g. to score unlabelled clips in active
        learning. ``result`` comes from a run with this tuner's settings and encoder spec."""
        s = self.s
        if not s.uses_categories:
            raise TrialError(f"class probabilities need task 'categories' or 'both' (task is '{s.task}')")
        idx = np.asarray(idx, dtype=np.int64)
        head = make_head(s, result.num_states, result.hidden_size, self.targets.outputs)
        head.load_state_dict(result.state["head"])
        weights = result.state.get("encoder") or {}
        boundary = self._boundary(s.top_k) if (weights or s.averages_trained_frames) else None
        feats = None
        if self.cache is not None:
            feats = self.cache.get(self.data.paths, self.clip_wave, self.max_length,
                                   [] if boundary is None else [boundary], averages=self._frame_averages())
        encoder = None
        if boundary is not None or feats is None:
            encoder = self._load_encoder()
            if weights and s.peft != "none" and self._peft is None:   # a fresh tuner: inject the same modules
                self._peft = PeftPlan.from_settings(s, boundary)
                apply_peft(encoder, self._peft)
            params = dict(encoder.named_parameters())
            for name, value in weights.items():
                if name not in params:
                    raise TrialError(f"the result's encoder weight {name!r} is not in {self.spec}")
                params[name].data.copy_(value)
        out = self._outputs(TrialModel(head, encoder, feats), idx, boundary)
        n_classes = self.targets.n_classes
        return class_probabilities_of(out[:, :n_classes])

    def _averaged_from(self, encoder_layers: int | None) -> int | None:
        """The hidden state whose frames the exported model averages in time before the layers above it (the
        trained ones), or None: no averaging, or every such layer cut from the export (``encoder_layers``)."""
        if not self.s.averages_trained_frames:
            return None
        boundary = self._boundary(self.s.top_k)
        return boundary if encoder_layers is None or boundary < encoder_layers else None

    # --- features ----------------------------------------------------------------------------
    def _boundary(self, top_k: int | None) -> int:
        if top_k is None:
            return 0
        enc = self._load_encoder()
        return enc.num_layers - min(top_k, enc.num_layers)

    def timing(self) -> dict:
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

    def pooled(self, model: TrialModel, idx, live: int | None, grad: bool) -> torch.Tensor:
        """Per-layer pooled features (B, L+1, D) for clips ``idx``, normalised as ``settings.normalize``
        says; layers >= ``live`` run live (with grad if ``grad``), the rest come from the cache."""
        if model.feats is not None and live is None:
            return torch.from_numpy(self.normalised_statistics(model.feats)[idx])
        features = self.raw_pooled(model, idx, live, grad)
        return features if self.norm is None else self.norm.apply(features, idx)

    def raw_pooled(self, model: TrialModel, idx, live: int | None, grad: bool) -> torch.Tensor:
        """``pooled`` before normalisation."""
        feats, encoder, pooling = model.feats, model.encoder, self.s.pooling
        if feats is not None:   # (every layer from the cache: ``pooled`` reads normalised_statistics)
            frames = [torch.from_numpy(np.array(feats.frames_of(live, int(i)))) for i in idx]
            lengths = torch.tensor([f.shape[0] for f in frames])
            hidden = nn.utils.rnn.pad_sequence(frames, batch_first=True)
            hidden, mask = average_in_time(hidden, lengths_to_mask(lengths, hidden.shape[1]), self.s.frame_average)
            with torch.set_grad_enabled(grad):
                with compute(self.precision):
                    states = encoder.run_layers(hidden, mask, live)
                live_pooled = pool_states([state.float() for state in states], mask, pooling)
            return torch.cat([torch.from_numpy(self.statistics(feats)[idx, : live + 1]), live_pooled], dim=1)
        # naive path, or "all" layers training: encode the waveforms now
        start = time.perf_counter()
        x, lengths = self._waves(idx)
        cut = encoder.num_layers if live is None else live
        with torch.no_grad(), compute(self.precision):
            hidden, mask = encoder.embed(x, lengths)
            low = [hidden, *encoder.run_layers(hidden, mask, 0, cut)]
        if live is None or not grad:
            self.seconds["encode"] += time.perf_counter() - start
        high, high_mask = [], mask
        if cut < encoder.num_layers:
            above, high_mask = average_in_time(low[-1], mask, self.s.frame_average)
            with torch.set_grad_enabled(grad), compute(self.precision):
                high = encoder.run_layers(above, high_mask, cut)
        return torch.cat([pool_states([state.float() for state in low], mask, pooling),
                          *([pool_states([state.float() for state in high], high_mask, pooling)] if high else [])],
                         dim=1)

    @torch.no_grad()
    def _outputs(self, model: TrialModel, idx, live: int | None) -> np.ndarray:
        """Raw head outputs (class logits, then standardised dimensions) for clips ``idx``, in eval mode."""
        model.head.eval()
        self._set_encoder_mode(model.encoder, live, train=False)
        batch = max(self.s.batch_size, 32)
        outs = [self.forward(model, idx[b: b + batch], live, grad=False) for b in range(0, len(idx), batch)]
        return torch.cat(outs).numpy() if outs else np.zeros((0, model.head.classifier_outputs))


def _check_tensors(got: dict, expected: dict) -> None:
    """ValueError naming the first tensor of ``got`` whose name or shape is not ``expected``'s."""
    if set(got) != set(expected):
        name = sorted(set(got) ^ set(expected))[0]
        raise ValueError(f"tensor {name!r} is {'missing' if name in expected else 'not of this trial'}")
    for name, value in got.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[name].shape:
            raise ValueError(f"tensor {name!r} is not a tensor of shape {tuple(expected[name].shape)}")
