"""Evaluation scripts: rm_eval.py (RM accuracy and calibration), policy_eval.py (policy vs reference under judges),
generate.py (a policy's answers to given prompts), compare.py (frozen-RM vs APO runs side by side), rm_probe.py and
bon_probe.py (does the RM keep up with the policy; best-of-n against the judge) and study.py (paired seeds per arm).
Each one imports only apo_online, never another script here: the pieces they share (figures, strict JSON, judges,
the RM on human pairs) are in apo_online/evaluation/. Run them from the repository root, e.g.
`python eval/rm_eval.py --run runs/apo_ppo` or `python -m eval.rm_eval --run runs/apo_ppo`."""
