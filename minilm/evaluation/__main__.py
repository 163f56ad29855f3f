"""python -m minilm.evaluation: see minilm/evaluation/cli.py."""
import sys

from minilm.evaluation.cli import main

sys.exit(main())
