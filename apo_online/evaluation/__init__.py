"""Measuring a run: the in-game evaluation by the hidden judge (game_eval), the best-of-n estimator and sample pools
of the probe (best_of_n, bon_samples), interval estimates (statistics), and the pieces the scripts under eval/ share
(plots, report_json, human_pairs, policy_judges)."""
