"""The one interface every speech encoder sits behind.

A batch of waveforms with lengths goes in; per-layer hidden states and a frame mask come out.
The forward pass is split at layer boundaries (``embed`` then ``run_layers``) so that the
feature cache can store the output of the frozen bottom and a trial runs only the layers it trains.

Hidden-state convention (as Hugging Face's ``output_hidden_states``): index 0 is the input of
transformer layer 0, index i the output of layer i-1; there are ``num_layers + 1`` of them.
A final norm the model applies after its last layer belongs to the last hidden state only.

Truncation: a head that reads hidden state k needs only layers 0..k-1, so ``truncate(k)`` drops
the layers above (and the final norm) in place; hidden states 0..k of the truncated encoder equal
the full encoder's. To re-create a truncated encoder (e.g. from a saved model folder), load the
spec and truncate it again: ``load_encoder(spec, num_layers=k)``.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import nn

from .spec import EncoderError


class SpeechEncoder(nn.Module):
    spec: str = ""
    family: str = ""
    sample_rate: int = 16000
    max_seconds: float | None = None   # longest input the model accepts (Whisper: 30 s)
    source_num_layers: int | None = None   # the spec's layer count, set when truncated

    @property
    def num_layers(self) -> int:
        return len(self.transformer_layers())

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    def transformer_layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def remove_final_norm(self) -> None:
        """Drop what is applied after the last layer only (a final layer norm), in place."""
        raise NotImplementedError

    def truncate(self, num_layers: int) -> None:
        """Keep transformer layers ``0 .. num_layers-1`` only, in place: hidden state ``num_layers``
        becomes the last one, equal to the full encoder's hidden state at that index (the final
        norm, which only the full top applies, goes too). ``num_layers`` equal to the current
        count changes nothing. Truncate a freshly loaded encoder, not one shared with other users.
        """
        current = self.num_layers
        if isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral) \
                or not 0 <= num_layers <= current:
            raise EncoderError(f"{self.spec}: cannot truncate to {num_layers!r} layers; "
                               f"the encoder has {current}, so choose 0..{current}")
        num_layers = int(num_layers)
        if num_layers == current:
            return
        self.source_num_layers = self.source_num_layers or current
        del self.transformer_layers()[num_layers:]
        self.remove_final_norm()

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

    def describe(self) -> dict:
        total = sum(p.numel() for p in self.parameters())
        return {"spec": self.spec, "family": self.family, "num_layers": self.num_layers,
                "source_num_layers": self.source_num_layers or self.num_layers,
                "hidden_size": self.hidden_size, "sample_rate": self.sample_rate, "parameters": total}


def freeze_for_inference(encoder: SpeechEncoder) -> SpeechEncoder:
    """Eval mode with every parameter frozen (how every loader hands an encoder out)."""
    encoder.requires_grad_(False)
    return encoder.eval()


def lengths_to_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def average_in_time(hidden: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded frames (B, T, D) and their mask (B, T) with every ``k`` consecutive frames of a clip averaged:
    (B, ceil(T / k), D) and the new mask. A clip's last group of fewer than ``k`` real frames is the mean of
    those (as ``cache.average_frames`` averages one clip's frames): the layers above see half the frames for
    k = 2, and attention's cost falls faster than that."""
    if k == 1:
        return hidden, mask
    batch, frames, width = hidden.shape
    groups = -(-frames // k)
    pad = groups * k - frames
    weights = nn.functional.pad(mask.to(hidden.dtype), (0, pad)).reshape(batch, groups, k, 1)
    summed = (nn.functional.pad(hidden, (0, 0, 0, pad)).reshape(batch, groups, k, width) * weights).sum(2)
    counts = weights.sum(2)
    return summed / counts.clamp(min=1), counts[..., 0] > 0
