"""RAVDESS speech: Actor_12/03-01-06-01-02-01-12.wav =
modality-vocal_channel-emotion-intensity-statement-repetition-actor."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import CorpusError
from .common import Scan, corpus_files, existing_folder, label_for

NAME = re.compile(
    r"^(?P<modality>\d{2})-(?P<channel>\d{2})-(?P<code>\d{2})-(?P<intensity>\d{2})-"
    r"(?P<statement>\d{2})-(?P<repetition>\d{2})-(?P<actor>\d{2})$")

AUDIO_ONLY, SPEECH = "03", "01"
INTENSITY = {"01": "normal", "02": "strong"}
STATEMENT = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def scan(root: Path, view: str | None) -> Scan:
    existing_folder(root, "RAVDESS")
    result = Scan()
    files = result.take_wavs(corpus_files(root))
    matched = 0
    for path in files:
        m = NAME.match(path.stem)
        if m is None:
            result.skip(path, "not a RAVDESS file name (expected e.g. 03-01-06-01-02-01-12.wav)")
            continue
        matched += 1
        if m["modality"] != AUDIO_ONLY or m["channel"] != SPEECH:
            result.skip(path, f"not audio-only speech (modality {m['modality']}, vocal channel "
                              f"{m['channel']}; expected {AUDIO_ONLY}, {SPEECH})")
            continue
        if m["intensity"] not in INTENSITY:
            result.skip(path, f"unknown RAVDESS intensity code '{m['intensity']}'")
            continue
        found = label_for(m["code"], "ravdess", view, "RAVDESS emotion code")
        if isinstance(found, str):
            result.skip(path, found)
            continue
        native, label = found
        actor = int(m["actor"])
        result.records.append({
            "path": str(path),   # resolved (and de-duplicated) by build_table
            "label": label,
            "speaker": m["actor"],
            "gender": "m" if actor % 2 == 1 else "f",   # odd-numbered actors are male
            "intensity": INTENSITY[m["intensity"]],
            "text": STATEMENT.get(m["statement"], m["statement"]),
            "original_label": native,
        })
    if matched == 0:
        raise CorpusError(f"{root}: no RAVDESS files found ({len(files)} .wav files, none named "
                          f"like 03-01-06-01-02-01-12.wav)")
    return result
