"""A run's life on disk: its directory and lock (directory), checkpoints and resume (checkpoint), stop requests and
signals (stopping), metrics.jsonl and TensorBoard (log), loading a finished run (loading) and its model card
(model_card)."""
