"""EmoDB (Berlin Database of Emotional Speech): 03a01Fa.wav = speaker 03, text a01, letter F, version a."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import CorpusError
from .common import Scan, corpus_files, existing_folder, label_for

NAME = re.compile(r"^(?P<speaker>\d{2})(?P<text>[a-z]\d{2})(?P<code>[A-Za-z])(?P<version>[a-z])$")

# Speaker genders from the EmoDB documentation.
SPEAKER_GENDER = {
    "03": "m", "08": "f", "09": "f", "10": "m", "11": "m",
    "12": "m", "13": "f", "14": "f", "15": "m", "16": "f",
}


def scan(root: Path, view: str | None, *, title: str = "EmoDB") -> Scan:
    existing_folder(root, title)
    result = Scan()
    files = result.take_wavs(corpus_files(root))
    matched = 0
    for path in files:
        m = NAME.match(path.stem)
        if m is None:
            result.skip(path, "not an EmoDB file name (expected e.g. 03a01Fa.wav)")
            continue
        matched += 1
        found = label_for(m["code"], "emodb", view, "EmoDB emotion letter")
        if isinstance(found, str):
            result.skip(path, found)
            continue
        native, label = found
        result.records.append({
            "path": str(path),   # resolved (and de-duplicated) by build_table
            "label": label,
            "speaker": m["speaker"],
            "gender": SPEAKER_GENDER.get(m["speaker"]),
            "text": m["text"],
            "original_label": native,
        })
    if matched == 0:
        raise CorpusError(
            f"{root}: no {title} files found ({len(files)} .wav files, none named like 03a01Fa.wav)")
    return result
