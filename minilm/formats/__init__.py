"""Checkpoint formats: our weights in other projects' layouts (GGUF, Hugging Face Llama)."""
