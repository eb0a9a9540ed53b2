"""ser_tune: Ray Tune hyper-parameter optimisation for CPU fine-tuning of speech encoders for SER."""

__version__ = "0.1.0"
