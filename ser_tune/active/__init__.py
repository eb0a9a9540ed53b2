"""Active learning over a speaker-independent pool, with optional task-adaptive pre-training (TAPT)."""
