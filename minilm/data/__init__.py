"""What the model learns from, and the requests it is judged on.

    corpus.py    the pretraining corpus: Python files, filtered, deduplicated, split by file
    tokens.py    the corpus as token files (cached memmaps), random windows, exact validation batches
    sft.py       task records as fine-tuning examples: prompt and answer tokens, the loss mask
    mining.py    one file's documented, self-contained functions as tasks, filter by filter (`ast`)
    mined.py     the functions mined from the stdlib or a folder (--sft_source): decontaminated, verified
    tasks/       the procedural task suite: families, held-out phrasing and composition splits
    requests.py  the requests split (requests.jsonl): 168 function requests written by hand, one idea
                 at a time, in a chat's informal style; not from the suite's templates, HumanEval or MBPP
"""
