"""instructemo tune: an Optuna study over config keys (`study.py`), its search space and its report."""
