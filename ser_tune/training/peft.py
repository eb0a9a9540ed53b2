"""Parameter-efficient fine-tuning (PEFT) of the encoder layers a trial trains.

Modes (``TrialSettings.peft``), applied to the layers that train (the top K with ``unfreeze: top:K``,
every transformer layer with ``all``):

- ``lora``: low-rank updates (Hugging Face ``peft``) on the attention projections named by
  ``lora_targets`` ("q,v" by default; also "k", "o" and "ffn" = both feed-forward linears);
- ``adapter``: a bottleneck adapter (SpeechBrain's ``HoulsbyAdapterLinear``) after each layer's
  feed-forward block, i.e. wrapping its output linear: ``y + up(swish(down(y)))``;
- ``lora+adapter``: both.

The original weights stay frozen; only the new modules (and the head) train. Every new module
starts as the identity (LoRA's B = 0 as peft initialises it, the adapter's up-projection zeroed
here, as Houlsby et al. start near identity), so before any training step the adapted encoder
computes exactly the pretrained features: head-only epochs may keep reading the feature cache.

A ``PeftPlan`` (JSON-able) says what was injected where; the model folder stores it so that
``load_model`` can inject the same modules before loading their trained weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import pandas as pd
from torch import nn

from .settings import SettingsError, TrialSettings

PEFT_MODES = ("none", "lora", "adapter", "lora+adapter")
# lora_targets keys -> the last name of the Linear modules they mean (Whisper; wav2vec2/HuBERT/WavLM).
LORA_TARGETS = {"q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("out_proj",),
                "ffn": ("fc1", "fc2", "intermediate_dense", "output_dense")}
FFN_OUTPUT = ("fc2", "output_dense")      # where a bottleneck adapter goes
ADAPTER_PARTS = ("adapter_down_proj", "adapter_up_proj")
# Parameter groups two-stage adaptation can keep fixed in stage two.
FREEZE_GROUPS = ("lora", "adapter", "head")
# WavLM's attention hands q/k/v/out weights straight to torch's multi_head_attention_forward,
# bypassing the Linear modules, so LoRA there would silently change nothing.
_DIRECT_WEIGHT_ATTENTION = {"wavlm"}


class PeftError(SettingsError):
    """A PEFT setting or plan cannot be applied; the message names the field or module."""


@dataclass(frozen=True)
class PeftPlan:
    """What a trial injects into its encoder: the mode, from which layer on, and the mode's sizes."""
    mode: str
    first_layer: int
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "v")
    adapter_size: int = 64

    @property
    def uses_lora(self) -> bool:
        return "lora" in self.mode

    @property
    def uses_adapter(self) -> bool:
        return "adapter" in self.mode

    @classmethod
    def from_settings(cls, settings: TrialSettings, first_layer: int) -> "PeftPlan":
        check_peft_settings(settings)
        return cls(mode=settings.peft, first_layer=int(first_layer), lora_rank=settings.lora_rank,
                   lora_alpha=float(settings.lora_alpha), lora_targets=parse_lora_targets(settings.lora_targets),
                   adapter_size=settings.adapter_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora_targets"] = ",".join(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, raw: dict) -> "PeftPlan":
        try:
            plan = cls(mode=raw["mode"], first_layer=int(raw["first_layer"]), lora_rank=int(raw["lora_rank"]),
                       lora_alpha=float(raw["lora_alpha"]), lora_targets=parse_lora_targets(raw["lora_targets"]),
                       adapter_size=int(raw["adapter_size"]))
        except KeyError as err:
            raise PeftError(f"PEFT plan lacks the field {err.args[0]!r} (got {sorted(raw)})") from None
        if plan.mode not in PEFT_MODES[1:]:
            raise PeftError(f"PEFT plan mode {plan.mode!r} must be one of {', '.join(PEFT_MODES[1:])}")
        return plan


def parse_lora_targets(text: str | Iterable[str]) -> tuple[str, ...]:
    """"q,v,ffn" -> ("q", "v", "ffn"); unknown names are a PeftError naming ``lora_targets``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    targets = tuple(dict.fromkeys(t.strip() for t in items if t.strip()))
    bad = [t for t in targets if t not in LORA_TARGETS]
    if not targets or bad:
        raise PeftError(f"trial setting 'lora_targets' = {text!r}: use a comma-separated list of "
                        f"{', '.join(LORA_TARGETS)} (got {'nothing' if not targets else repr(bad[0])})")
    return targets


def check_peft_settings(settings: TrialSettings) -> None:
    """The PEFT fields' values (TrialSettings.validate checks only the mode's name)."""
    if settings.peft not in PEFT_MODES:
        raise PeftError(f"trial setting 'peft' = {settings.peft!r}: must be one of {', '.join(PEFT_MODES)}")
    for name, rule, ok in (("lora_rank", ">= 1", settings.lora_rank >= 1), ("lora_alpha", "> 0", settings.lora_alpha > 0),
                           ("adapter_size", ">= 1", settings.adapter_size >= 1)):
        if not ok:
            raise PeftError(f"trial setting '{name}' = {getattr(settings, name)!r}: must be {rule}")
    parse_lora_targets(settings.lora_targets)


# --- injection -----------------------------------------------------------------------------------
def apply_peft(encoder: nn.Module, plan: PeftPlan) -> dict[str, nn.Parameter]:
    """Inject the plan's modules into ``encoder.transformer_layers()[plan.first_layer:]`` in place.

    Returns the new parameters by their name in ``encoder.named_parameters()``; every other
    parameter is set not to require gradients.
    """
    if getattr(encoder, "_ser_tune_peft", None) is not None:
        raise PeftError(f"{getattr(encoder, 'spec', 'encoder')}: PEFT modules are already injected")
    layers = encoder.transformer_layers()
    if not 0 <= plan.first_layer < len(layers):
        raise PeftError(f"PEFT first_layer {plan.first_layer} is outside the encoder's {len(layers)} layers")
    family = getattr(encoder, "family", "")
    attention = [t for t in plan.lora_targets if t != "ffn"]
    if plan.uses_lora and family in _DIRECT_WEIGHT_ATTENTION and attention:
        raise PeftError(f"trial setting 'lora_targets': {family} attention reads its projection weights "
                        f"directly, so LoRA on {','.join(attention)} would have no effect; use 'ffn' or adapters")
    prefix = {id(m): name for name, m in encoder.named_modules()}
    adapted = [(prefix[id(layer)], layer) for layer in layers[plan.first_layer:]]
    # Adapters first: HoulsbyAdapterLinear wraps a plain nn.Linear, which LoRA then may still target
    # inside it (the wrapped output linear keeps its name with ".pretrained_linear" appended).
    if plan.uses_adapter:
        for _, layer in adapted:
            _add_adapter(layer, plan.adapter_size)
    if plan.uses_lora:
        _add_lora(encoder, adapted, plan)
    encoder.requires_grad_(False)
    new = {name: p for name, p in encoder.named_parameters() if peft_group(name) is not None}
    for p in new.values():
        p.requires_grad_(True)
    encoder._ser_tune_peft = plan
    return new


def _add_adapter(layer: nn.Module, size: int) -> None:
    from speechbrain.nnet.adapters import HoulsbyAdapterLinear, replace_module

    found = [(name, m) for name, m in layer.named_modules()
             if name.rsplit(".", 1)[-1] in FFN_OUTPUT and isinstance(m, nn.Linear)]
    if len(found) != 1:
        raise PeftError(f"{type(layer).__name__}: expected one feed-forward output linear "
                        f"({' or '.join(FFN_OUTPUT)}) for the adapter, found {[n for n, _ in found]}")
    name, linear = found[0]
    adapter = HoulsbyAdapterLinear(linear, size)
    nn.init.zeros_(adapter.adapter_up_proj.weight)   # start as the identity (biases are zero already)
    replace_module(layer, name, adapter)


def _add_lora(encoder: nn.Module, adapted: list[tuple[str, nn.Module]], plan: PeftPlan) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    wanted = {name for t in plan.lora_targets for name in LORA_TARGETS[t]}
    modules = []
    for layer_name, layer in adapted:
        for name, m in layer.named_modules():
            parts = name.split(".")
            if parts[-1] == "pretrained_linear":   # an FFN output linear inside an adapter
                parts = parts[:-1]
            if isinstance(m, nn.Linear) and parts[-1] in wanted and not set(parts) & set(ADAPTER_PARTS):
                modules.append(f"{layer_name}.{name}")
    if not modules:
        raise PeftError(f"trial setting 'lora_targets' = {','.join(plan.lora_targets)!r}: no matching Linear "
                        f"in the encoder's layers {plan.first_layer}..")
    # Exact module names: only the adapted layers get LoRA, whatever peft's suffix matching would find.
    config = LoraConfig(r=plan.lora_rank, lora_alpha=plan.lora_alpha, lora_dropout=0.0, bias="none",
                        target_modules=modules)
    inject_adapter_in_model(config, encoder)


def peft_group(name: str) -> str | None:
    """"lora" or "adapter" for a parameter a PEFT module added, else None (a pretrained weight)."""
    if ".lora_" in name:
        return "lora"
    if any(f".{part}." in name for part in ADAPTER_PARTS):
        return "adapter"
    return None


# --- starting a trial from another trial's weights (two-stage adaptation) -----------------------
def start_from(init_state: dict, *, encoder: nn.Module | None, head: nn.Module, trained: dict[str, nn.Parameter],
               freeze: Iterable[str] = (), load_head: bool = True) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """Copy ``init_state`` ({"encoder": {name: tensor}, "head": state dict}) into a trial's model.

    Encoder weights must all be among ``trained`` (the parameters this trial runs live, so its
    cached frozen features below them stay valid). Groups in ``freeze`` ("lora", "adapter",
    "head") keep their values and do not train. Returns (still trained, fixed) encoder
    parameters by name.
    """
    freeze = list(freeze)
    bad = [g for g in freeze if g not in FREEZE_GROUPS]
    if bad:
        raise PeftError(f"freeze: unknown group {bad[0]!r}; choose from {', '.join(FREEZE_GROUPS)}")
    weights = init_state.get("encoder") or {}
    if weights:
        if encoder is None:
            raise PeftError("the starting state holds encoder weights, but this trial trains no encoder layer "
                            "(set unfreeze to top:K or all)")
        outside = sorted(set(weights) - set(trained))
        if outside:
            raise PeftError(f"the starting state's encoder weight {outside[0]!r} is not among this trial's trained "
                            "parameters: adapt at least the layers and modules the first stage adapted")
        for name, value in weights.items():
            if trained[name].shape != value.shape:
                raise PeftError(f"the starting state's {name!r} has shape {tuple(value.shape)}, "
                                f"this trial's has {tuple(trained[name].shape)} (other lora_rank/adapter_size?)")
            trained[name].data.copy_(value)
    if load_head and init_state.get("head") is not None:
        head.load_state_dict(init_state["head"])
    fixed = {n: p for n, p in trained.items() if peft_group(n) in freeze}
    still = {n: p for n, p in trained.items() if n not in fixed}
    for p in fixed.values():
        p.requires_grad_(False)
    if "head" in freeze:
        head.requires_grad_(False)
    return still, fixed


# --- reporting -----------------------------------------------------------------------------------
def mode_name(peft: str, unfreeze: str) -> str:
    """How the report names a fine-tuning mode: frozen, top:K, full, or the PEFT mode and its layers."""
    if peft and peft != "none":
        return f"{peft} ({unfreeze})" if unfreeze != "none" else "frozen (head only)"
    return {"none": "frozen (head only)", "all": "full"}.get(unfreeze, unfreeze)


def peft_summary(trials: pd.DataFrame, fixed: dict | None = None) -> pd.DataFrame:
    """BCA against trainable parameters and seconds per trial, one row per fine-tuning mode.

    ``trials`` is a study's trials.csv; settings not searched have no cfg_ column and are taken
    from ``fixed`` (the experiment's ``trial:`` section), else TrialSettings' defaults.
    Columns: mode, trials, val_bca_mean, val_bca_best, test_bca_mean, trainable_params,
    total_params, trainable_share, seconds_per_trial; sorted by trainable_params.
    """
    fixed = dict(fixed or {})
    frame = trials[trials["status"].fillna("TERMINATED") != "ERROR"] if "status" in trials else trials

    def setting(name: str) -> pd.Series:
        default = fixed.get(name, getattr(TrialSettings, name))
        column = frame[f"cfg_{name}"] if f"cfg_{name}" in frame else pd.Series(default, index=frame.index)
        return column.fillna(default).astype(str)

    modes = [mode_name(p, u) for p, u in zip(setting("peft"), setting("unfreeze"))]
    seconds = frame["time_total_s"] if "time_total_s" in frame else (
        frame[[c for c in ("load_seconds", "encode_seconds", "train_seconds") if c in frame]].sum(axis=1, min_count=1))

    def col(name: str) -> pd.Series:
        return pd.to_numeric(frame[name], errors="coerce") if name in frame else pd.Series(np.nan, index=frame.index)

    work = pd.DataFrame({"mode": modes, "val_bca": col("val_bca"), "test_bca": col("test_bca"),
                         "trainable_params": col("trainable_params"), "total_params": col("total_params"),
                         "seconds": pd.to_numeric(seconds, errors="coerce")}, index=frame.index)
    out = work.groupby("mode", sort=False).agg(
        trials=("val_bca", "size"), val_bca_mean=("val_bca", "mean"), val_bca_best=("val_bca", "max"),
        test_bca_mean=("test_bca", "mean"), trainable_params=("trainable_params", "median"),
        total_params=("total_params", "median"), seconds_per_trial=("seconds", "mean")).reset_index()
    share = (out["trainable_params"] / out["total_params"]).where(out["total_params"] > 0)
    out.insert(7, "trainable_share", share)
    return out.sort_values("trainable_params", kind="stable", na_position="last").reset_index(drop=True)
