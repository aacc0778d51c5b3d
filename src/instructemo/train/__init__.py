"""Training: sft (`sft.py`) and the classification head (`head.py`), the Trainer set-up and saving, checkpoint
selection, the monitor that stops a diverging run, checks before anything loads, and multi-process launch.
"""
