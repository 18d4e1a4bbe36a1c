"""The offline testbeds and their shipped files: the embedded task (embedded), the judge-labelled task (judged_task,
judged_pairs, reference_samples) and the hidden gold judge that labels and evaluates it (gold_judge)."""
