"""Studies: the one driver every kind of study runs on, and the study folder's format.

- ``folder``: the study folder, written by the driver and read by ``ser_tune.results`` (no Ray);
- ``prepare``: corpus, split and the shared encode;
- ``driver``: units of work as Ray Tune Tuners, interrupts, collecting trials;
- ``session``: a closed local Ray or a joined cluster, and ``--json`` stdout;
- ``progress``: the line per finished trial;
- ``strategies``: the strategy-search kind of study (``python -m ser_tune.launch``);
- ``cli``: what every study command line shares.

Import the modules themselves; this package imports nothing, so reading a study folder stays light.
"""
