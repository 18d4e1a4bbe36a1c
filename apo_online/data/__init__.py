"""The game's data: rows read from files (rows) -> a named format turns them into canonical examples (formats,
hh_apo_formats) -> a task holds the train/eval/RM splits (task); canonical holds the examples, tokenisation and
batching every other stage reads. A new data format is one function and one table entry in formats.py."""
