"""Judging a model by running the code it writes.

    execution.py         the sandbox that runs generated code against tests
    isolation.py         how strongly it isolates: bwrap, unshare or limits, probed once
    sandbox_programs.py  the small programs that run inside it
    evaluate.py          tasks -> completions -> verdicts, and the teacher-forced loss
    humaneval.py         HumanEval's 164 problems, plain or chat prompts
    metrics.py           pass@k and the reports
    failures.py          why a completion failed, by kind
    cli.py               python -m minilm.evaluation --run RUN --task_file F
"""
