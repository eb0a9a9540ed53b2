"""RAVDESS speech: Actor_12/03-01-06-01-02-01-12.wav =
modality-vocal_channel-emotion-intensity-statement-repetition-actor."""
from __future__ import annotations

import re
from pathlib import Path

from .common import Naming, Scan, scan_named

TITLE = "RAVDESS"   # in messages about its folder

NAME = re.compile(
    r"^(?P<modality>\d{2})-(?P<channel>\d{2})-(?P<code>\d{2})-(?P<intensity>\d{2})-"
    r"(?P<statement>\d{2})-(?P<repetition>\d{2})-(?P<actor>\d{2})$")

AUDIO_ONLY, SPEECH = "03", "01"
INTENSITY = {"01": "normal", "02": "strong"}
STATEMENT = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def scan(root: Path, view: str | None) -> Scan:
    naming = Naming(TITLE, "ravdess", NAME, "03-01-06-01-02-01-12.wav", "RAVDESS emotion code")

    def describe(m) -> dict | str:
        if m["modality"] != AUDIO_ONLY or m["channel"] != SPEECH:
            return (f"not audio-only speech (modality {m['modality']}, vocal channel {m['channel']}; "
                    f"expected {AUDIO_ONLY}, {SPEECH})")
        if m["intensity"] not in INTENSITY:
            return f"unknown RAVDESS intensity code '{m['intensity']}'"
        return {"speaker": m["actor"], "gender": "m" if int(m["actor"]) % 2 == 1 else "f",   # odd actors are male
                "intensity": INTENSITY[m["intensity"]], "text": STATEMENT.get(m["statement"], m["statement"])}

    return scan_named(root, naming, view, describe)
