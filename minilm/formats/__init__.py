"""Checkpoint formats: our weights in someone else's layout.

The decoder (minilm/model/gpt.py) knows nothing about files. Each module here maps one foreign format
onto our parameter names and back: a Hugging Face Llama directory (llama_hf), a GGUF file (gguf).
A mapping only renames, fuses or splits tensors (q, k, v into one c_attn; gate, up into one c_fc)
and translates the config; it never changes a number, so a test can demand equal logits.
"""
