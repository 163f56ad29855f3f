"""What the model learns from.

    corpus.py  the pretraining corpus: Python files, filtered, deduplicated, split by file
    tokens.py  the corpus as token files (cached memmaps), random windows, exact validation batches
    sft.py     task records as fine-tuning examples: prompt and answer tokens, the loss mask
    tasks/     the procedural task suite: families, held-out phrasing and composition splits
"""
