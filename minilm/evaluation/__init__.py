"""Judging a model by running the code it writes.

    execution.py         the sandbox that runs generated code against tests
    isolation.py         how strongly it isolates: bwrap, unshare or limits, probed once
    sandbox_process.py   one sandbox's processes and pipes, seen from the evaluator
    sandbox_programs.py  the launcher and the namespace set-up that run in it
    harness.py           the program in it that runs the candidate and its tests, and the verdict
    evaluate.py          tasks -> completions -> verdicts, and the teacher-forced loss
    humaneval.py         HumanEval's 164 problems, plain or chat prompts
    metrics.py           pass@k and the reports
    statistics.py        before against after: Wilson intervals, flips, McNemar's exact test
    contamination.py     word n-grams an evaluation text shares with the training data
    failures.py          why a completion failed, by kind
    cli.py               python -m minilm.evaluation --run RUN --task_file F
"""
