"""minilm: a small, readable, from-scratch PyTorch framework for training code language models."""
__version__ = "0.1.0"
