"""Two-stage adaptation: PEFT modules trained on a source corpus, then on a target corpus.

``config``: the YAML schema; ``study``: the stages as a kind of study on the driver;
``python -m ser_tune.adapt CONFIG``: the command line.
"""
from .config import AdaptConfig, AdaptError, config_from_dict, load_config

__all__ = ["AdaptConfig", "AdaptError", "config_from_dict", "load_config", "run"]


def run(cfg: AdaptConfig) -> dict:
    """Run both stages (and the baseline) in this process, on a local Ray; returns adapt.json's report."""
    import json

    from ..study.cli import run_in_process
    from ..config import Resources
    from .study import RESULT_FILE, AdaptStudy

    folder = run_in_process(AdaptStudy(cfg), name=cfg.name, storage=cfg.storage, resources=Resources())
    return json.loads((folder.dir / RESULT_FILE).read_text())
