"""Cross-corpus zero-shot evaluation: a tuned model on corpora it never saw, beside two baselines.

``python -m ser_tune.crosscorpus MODEL_DIR --corpus NAME --root DIR [--label-map VIEW] ...``

Labels. Each target clip's native emotion (the corpus's own class) goes through a label view
(``--label-map``, else the view that brings most of the model's labels into play, data.pick_view:
e.g. ``emodb7`` for an EmoDB-trained model on RAVDESS, calm -> boredom; a CSV manifest's labels as given)
and then into the model's label space (same name, or the same canonical emotion under
label_maps.yaml's aliases, e.g. "angry" -> "anger"). Clips whose label has no counterpart in
the view or among the model's labels are *excluded* and counted per label. Model classes no
target clip carries are listed as ``missing_classes``; the model may still predict them, and
such predictions count as errors.

Metrics (per target, over the clips used):
- ``bca``: balanced class accuracy = sklearn's ``balanced_accuracy_score``, the mean recall over
  the classes present in the target (missing classes have no recall and do not enter the mean);
- ``accuracy``: share of clips predicted right;
- ``confusion``: counts, rows = true class, columns = predicted class, both over the model's labels.

Baselines, on the same clips:
- ``random_head``: an untrained, randomly initialised head of the model's own kind on the
  tuned model's features (the reference paper's "zero-shot" comparison); mean BCA over
  ``random_seeds`` seeds (seed, seed+1, ...), each seed's predictions kept.
- ``frozen_head``: logistic regression (standardised per-layer pooled features, class-balanced)
  trained on the *source* corpus with the encoder's ORIGINAL weights (``load_encoder(spec)``),
  applied to the targets' original-encoder features: what a frozen-feature model learns from
  the same source, without any fine-tuning. The source is ``--source-corpus/--source-root``
  (all its clips), else the model's study (``model.json`` "study" -> ``study.json``; the
  study's train-split clips, features read from the study's feature cache when present).
  Without a source the baseline is skipped, with a note.

Each target clip is embedded once: by the tuned model when fine-tuning changed its encoder, else
from the feature cache (the original encoder's features, computed once per corpus and reused); those
features serve the tuned head, the random heads and, when the encoder is unchanged, the baseline.
"""
from __future__ import annotations

from .baselines import scores
from .evaluate import RANDOM_SEEDS, evaluate_cross_corpus, run_for_study
from .report import REPORT_FILE, RESULT_FILE, markdown, write_outputs
from .targets import CrossCorpusError

__all__ = ["CrossCorpusError", "REPORT_FILE", "RESULT_FILE", "RANDOM_SEEDS", "evaluate_cross_corpus", "markdown",
           "run_for_study", "scores", "write_outputs"]
