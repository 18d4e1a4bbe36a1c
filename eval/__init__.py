"""Evaluation scripts: rm_eval.py (RM accuracy and calibration), policy_eval.py (policy vs reference under judges),
compare.py (frozen-RM vs APO runs side by side) and plots.py (their figures). Run them from the repository root,
e.g. `python eval/rm_eval.py --run runs/apo_ppo` or `python -m eval.rm_eval --run runs/apo_ppo`."""
