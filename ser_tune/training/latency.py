"""Deployment costs of a model: CPU inference latency per second of audio, size on disk, parameters.

Latency is measured the way a user shipping SER on a CPU would run it: one clip at a time, on
``threads`` torch threads (1 by default: a CPU core), encoder included, after ``warmup`` passes
over the clips. One repeat runs every clip once; its latency is its total seconds over the
clips' total audio seconds, in milliseconds per second of audio. The reported value is the
median over repeats; the spread (min, max, interquartile range, coefficient of variation) says
how noisy the machine was. Beside that wall-clock latency, each repeat's CPU time of the calling
thread is kept (``cpu_ms_per_s``, median over repeats): on one torch thread the inference runs on
the calling thread, so its CPU time is what the model costs a free core, and it barely moves when
other processes share the machine, which the wall-clock does (a busy 2-core machine: interquartile
range about 5 % of the median against 40-60 % for the wall-clock).

A trial of a study that asks for them (``objective.deployment``, or an objective or constraint naming
one) gets :func:`deployment_costs` of the model it exports: ``latency_ms_per_s`` (with its spread),
``model_bytes`` and ``total_params`` of the model as it would be deployed (see each function).

What gets timed: a callable ``wave -> output``, or an object with ``embed(wave)`` and ``head``
(a ``TunedModel`` of ``training.export``), timed as ``head(embed(wave))``. When the model has a
``max_length`` (seconds, as ``TunedModel``), it crops its input, so a clip counts at most that
many seconds of audio.

Example: a tiny encoder behind a mean-pooling "model".

>>> import numpy as np, torch
>>> from ser_tune.encoders import load_encoder
>>> encoder = load_encoder("tiny-hubert")
>>> def model(wave):
...     x = torch.from_numpy(wave)[None]
...     states, _ = encoder(x, torch.tensor([x.shape[1]]))
...     return states[-1].mean(1)
>>> waves = [np.zeros(16000, np.float32), np.zeros(8000, np.float32)]
>>> result = measure_latency(model, waves, 16000, repeats=3)
>>> result.audio_seconds, result.repeats, result.threads
(1.5, 3, 1)
>>> 0 < result.min_ms_per_s <= result.latency_ms_per_s <= result.max_ms_per_s
True
>>> trainable, total = count_parameters(encoder)  # load_encoder freezes every parameter
>>> encoder.truncate(1)
>>> trainable, count_parameters(encoder)[1] < total
(0, True)
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class LatencyResult:
    """Inference latency in milliseconds per second of audio (see the module docstring)."""
    latency_ms_per_s: float          # median over repeats
    min_ms_per_s: float
    max_ms_per_s: float
    iqr_ms_per_s: float              # 75th - 25th percentile over repeats (linear interpolation)
    cv: float                        # standard deviation (ddof=0) / mean over repeats
    per_repeat_ms_per_s: tuple[float, ...]
    repeats: int
    clips: int
    audio_seconds: float             # audio one repeat runs (after the model's crop)
    threads: int
    cpu_ms_per_s: float = float("nan")       # median over repeats of the calling thread's CPU time
    cpu_iqr_ms_per_s: float = float("nan")


def inference_call(model: Any) -> Callable[[np.ndarray], Any]:
    """The call that is timed: ``model`` itself, or ``head(embed(wave))`` for a TunedModel-like."""
    if hasattr(model, "embed") and hasattr(model, "head"):
        return lambda wave: model.head(model.embed(wave))
    if callable(model):
        return model
    raise ValueError(f"measure_latency: {type(model).__name__} is neither callable nor has embed() and head")


def counted_seconds(model: Any, waves: Sequence[np.ndarray], sample_rate: int) -> float:
    """Audio seconds one pass over ``waves`` runs, after the model's ``max_length`` crop."""
    crop = getattr(model, "max_length", None)
    limit = float("inf") if crop is None else float(crop)
    return float(sum(min(len(wave) / sample_rate, limit) for wave in waves))


def check_inputs(model: Any, waves: Sequence[np.ndarray], sample_rate: int, repeats: int,
                 warmup: int, threads: int) -> None:
    """One clear line for input that cannot be measured."""
    if not len(waves):
        raise ValueError("measure_latency: no clips given (waves is empty)")
    for index, wave in enumerate(waves):
        if np.ndim(wave) != 1:
            raise ValueError(f"measure_latency: clip {index} has shape {np.shape(wave)}, expected one channel (samples,)")
        if len(wave) == 0:
            raise ValueError(f"measure_latency: clip {index} has no samples")
    if sample_rate <= 0:
        raise ValueError(f"measure_latency: sample_rate must be positive, got {sample_rate}")
    own_rate = getattr(model, "sample_rate", None)
    if own_rate is not None and int(own_rate) != int(sample_rate):
        raise ValueError(f"measure_latency: the model expects {own_rate} Hz audio, the clips are {sample_rate} Hz")
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0), ("threads", threads, 1)):
        if value < low:
            raise ValueError(f"measure_latency: {name} must be at least {low}, got {value}")


@contextmanager
def torch_threads(threads: int):
    """torch.utils.benchmark's ``set_torch_threads``, imported when first timed: that import loads
    torch.utils.cpp_extension, which logs a warning on machines with CUDA_HOME but no CUDA runtime
    (silenced: nothing here compiles), and the study driver imports this module."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.benchmark.utils.common import set_torch_threads

    with set_torch_threads(threads):
        yield


def measure_latency(model: Any, waves: Sequence[np.ndarray], sample_rate: int, *, repeats: int = 5,
                    warmup: int = 1, threads: int = 1) -> LatencyResult:
    """Median CPU latency of ``model`` per second of audio over ``repeats`` passes over ``waves``.

    Runs under ``torch.inference_mode`` with ``threads`` intra-op threads (the previous count is
    restored afterwards, also on error); ``warmup`` untimed passes come first.
    """
    check_inputs(model, waves, sample_rate, repeats, warmup, threads)
    run = inference_call(model)
    waves = [np.asarray(w, dtype=np.float32) for w in waves]
    audio_seconds = counted_seconds(model, waves, sample_rate)
    per_repeat, cpu_per_repeat = [], []
    with torch_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            for wave in waves:
                run(wave)
        for _ in range(repeats):
            elapsed = cpu = 0.0
            for wave in waves:
                start, cpu_start = time.perf_counter(), time.thread_time()
                run(wave)
                elapsed += time.perf_counter() - start
                cpu += time.thread_time() - cpu_start
            per_repeat.append(elapsed / audio_seconds * 1000.0)
            cpu_per_repeat.append(cpu / audio_seconds * 1000.0)
    values = np.asarray(per_repeat)
    q25, q75 = np.percentile(values, [25, 75])
    cpu25, cpu75 = np.percentile(cpu_per_repeat, [25, 75])
    return LatencyResult(latency_ms_per_s=float(np.median(values)), min_ms_per_s=float(values.min()),
                         max_ms_per_s=float(values.max()), iqr_ms_per_s=float(q75 - q25),
                         cv=float(values.std() / values.mean()), per_repeat_ms_per_s=tuple(per_repeat),
                         repeats=repeats, clips=len(waves), audio_seconds=audio_seconds, threads=threads,
                         cpu_ms_per_s=float(np.median(cpu_per_repeat)), cpu_iqr_ms_per_s=float(cpu75 - cpu25))


def model_bytes(folder: str | Path) -> int:
    """Size on disk of a model folder: the sum of the sizes of the files under it (recursively)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"model_bytes: {folder} is not a folder")
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a parameter shared by several modules counts once."""
    params = list(module.parameters())  # nn.Module.parameters() already yields shared ones once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@dataclass(frozen=True)
class LatencyCheck:
    """How a study measures its trials' latency: the same clips (paths) for every trial, ``repeats``
    timed passes after ``warmup`` untimed ones, on ``threads`` torch threads."""
    clips: tuple[str, ...]
    repeats: int = 5
    warmup: int = 1
    threads: int = 1


def deployed_bytes(model: Any, folder: str | Path) -> int:
    """Bytes on disk of a model as deployed: its folder, plus the encoder weights it loads from its
    spec (those of ``model.encoder`` that the folder does not hold, as safetensors stores them: each
    tensor's bytes). A head on a frozen encoder cut at layer k counts the k kept layers."""
    from .export import WEIGHTS_FILE, read_weights

    own = set(read_weights(Path(folder) / WEIGHTS_FILE)["encoder"])
    spec_weights = sum(t.numel() * t.element_size() for name, t in model.encoder.state_dict().items()
                       if name not in own)
    return model_bytes(folder) + int(spec_weights)


def deployment_costs(folder: str | Path, waves: Sequence[np.ndarray], sample_rate: int, *, repeats: int = 5,
                     warmup: int = 1, threads: int = 1, encoder_loader: Callable | None = None) -> dict:
    """The deployment costs of the model folder ``folder`` (loaded with ``load_model``; ``encoder_loader``
    as there): latency per second of audio over ``waves`` with its spread (``latency_min_ms_per_s``,
    ``latency_max_ms_per_s``, ``latency_iqr_ms_per_s``, ``latency_cv``) and the thread's CPU time per
    second of audio (``latency_cpu_ms_per_s``, ``latency_cpu_iqr_ms_per_s``), ``model_bytes``
    (:func:`deployed_bytes`) and ``total_params`` (encoder as loaded, i.e. cut, and head)."""
    from .export import load_model

    model = load_model(folder, encoder_loader=encoder_loader)
    latency = measure_latency(model, waves, sample_rate, repeats=repeats, warmup=warmup, threads=threads)
    spread = ("min_ms_per_s", "max_ms_per_s", "iqr_ms_per_s", "cv", "audio_seconds", "cpu_ms_per_s", "cpu_iqr_ms_per_s")
    return {"latency_ms_per_s": latency.latency_ms_per_s, **{f"latency_{name}": getattr(latency, name) for name in spread},
            "model_bytes": deployed_bytes(model, folder),
            "total_params": count_parameters(model.encoder)[1] + count_parameters(model.head)[1]}
