"""The reward model's side of the game: the APO step and its sample buffer (apo_step), who scores responses
(scorers), the warm-up's cache (warmup_cache), score calibration (calibration), the in-loop adversary's held-out margin
(heldout_margin) and an offline refit of a finished run's RM (offline_refit)."""
