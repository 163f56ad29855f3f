"""Judging a model by running the code it writes.

    execution.py         the sandbox that runs generated code against tests
    sandbox_programs.py  the small programs that run inside it
    evaluate.py          tasks -> completions -> verdicts, and the teacher-forced loss
    humaneval.py         HumanEval's 164 problems, plain or chat prompts
    metrics.py           pass@k and the reports
    statistics.py        before against after: Wilson intervals, flips, McNemar's exact test
    contamination.py     word n-grams an evaluation text shares with the training data
    failures.py          why a completion failed, by kind
    cli.py               python -m minilm.evaluation --run RUN --task_file F
"""
