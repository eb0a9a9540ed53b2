"""EmoDB (Berlin Database of Emotional Speech): 03a01Fa.wav = speaker 03, text a01, letter F, version a."""
from __future__ import annotations

import re
from pathlib import Path

from .common import Naming, Scan, scan_named

NAME = re.compile(r"^(?P<speaker>\d{2})(?P<text>[a-z]\d{2})(?P<code>[A-Za-z])(?P<version>[a-z])$")

# Speaker genders from the EmoDB documentation.
SPEAKER_GENDER = {"03": "m", "08": "f", "09": "f", "10": "m", "11": "m", "12": "m", "13": "f", "14": "f", "15": "m",
                  "16": "f"}


TITLE = "EmoDB"   # in messages about its folder


def scan(root: Path, view: str | None, *, title: str = TITLE) -> Scan:
    def describe(m) -> dict:
        return {"speaker": m["speaker"], "gender": SPEAKER_GENDER.get(m["speaker"]), "text": m["text"]}

    naming = Naming(title, "emodb", NAME, "03a01Fa.wav", "EmoDB emotion letter")
    return scan_named(root, naming, view, describe)
