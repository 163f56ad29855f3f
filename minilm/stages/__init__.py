"""The pipeline a run goes through, one module per stage.

    tokenizer.py  train (or import) the tokenizer
    pretrain.py   pretrain on code (or import a pretrained base)
    finetune.py   fine-tune on the task suite (LoRA, full or top-k)
    eval.py       before and after, by running the generated code
    report.py     report.json and report.md
    reuse.py      which stages can be skipped: the keys of what each one read
    common.py     what they share: the run's config file, the task suite
    pipeline.py   the stages in order (train.py runs it)
"""
