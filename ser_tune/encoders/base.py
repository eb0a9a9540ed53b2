"""The one interface every speech encoder sits behind.

A batch of waveforms with lengths goes in; per-layer hidden states and a frame mask come out.
The forward pass is split at layer boundaries (``embed`` then ``run_layers``) so that the
feature cache can store the output of the frozen bottom and a trial runs only the layers it trains.

Hidden-state convention (as Hugging Face's ``output_hidden_states``): index 0 is the input of
transformer layer 0, index i the output of layer i-1; there are ``num_layers + 1`` of them.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch import nn


class EncoderError(ValueError):
    """An encoder spec cannot be loaded or used; the message names the spec or folder."""


class SpeechEncoder(nn.Module):
    spec: str = ""
    family: str = ""
    sample_rate: int = 16000
    max_seconds: float | None = None   # longest input the model accepts (Whisper: 30 s)

    @property
    def num_layers(self) -> int:
        return len(self.transformer_layers())

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    def transformer_layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def frontend_modules(self) -> Sequence[nn.Module]:
        """Modules before layer 0 (convolutional feature extractor, positional embedding).

        Kept frozen even when the whole encoder fine-tunes: the convention of wav2vec2-family
        fine-tuning, and what the reference recipe did.
        """
        raise NotImplementedError

    def embed(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) float waveforms at ``sample_rate`` and (B,) sample counts -> (h0 (B, T, D), mask (B, T) bool)."""
        raise NotImplementedError

    def run_layers(self, hidden: torch.Tensor, mask: torch.Tensor, start: int,
                   end: int | None = None) -> list[torch.Tensor]:
        """Run layers ``start .. end-1`` on ``hidden`` (the hidden state at index ``start``);
        returns hidden states ``start+1 .. end``."""
        raise NotImplementedError

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        hidden, mask = self.embed(waves, lengths)
        return [hidden, *self.run_layers(hidden, mask, 0)], mask

    def fingerprint(self) -> str:
        """Identifies the weights, for cache keys: the same spec with other weights must not share features."""
        digest = hashlib.sha256(self.spec.encode())
        with torch.no_grad():
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                flat = tensor.detach().float().flatten()
                # A strided sample keeps this cheap on large models while still telling weights apart.
                step = max(1, flat.numel() // 256)
                digest.update(flat[::step].numpy().tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> dict:
        total = sum(p.numel() for p in self.parameters())
        return {"spec": self.spec, "family": self.family, "num_layers": self.num_layers,
                "hidden_size": self.hidden_size, "sample_rate": self.sample_rate, "parameters": total}


def lengths_to_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]
