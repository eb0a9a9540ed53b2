"""Studies: the one driver every kind of study runs on, and the study folder's format.

- ``folder``: the study folder, written by the driver and read by ``ser_tune.results`` (no Ray);
- ``prepare``: corpus, split and the shared encode;
- ``driver``: units of work as Ray Tune Tuners, interrupts, collecting trials;
- ``session``: a closed local Ray or a joined cluster, and ``--json`` stdout;
- ``lost_state``: a unit whose Ray Tune state a kill left unreadable, started again without its ended trials;
- ``local_ray``: a killed launcher's local Ray, ended by the next study in the same storage;
- ``warm``: a trial's body in a pooled Ray worker kept across units (no per-unit start of torch);
- ``progress``: the line per finished trial;
- ``strategies``: the strategy-search kind of study (``python -m ser_tune.launch``);
- ``cli``: what every study command line shares.

Import the modules themselves; this package imports nothing, so reading a study folder stays light.
"""
