"""Decoding: from a model's logits to text.

    decode.py               one token at a time with a KV cache; greedy, top-k, top-p sampling
    continuous_batching.py  many prompts as one pool of rows that refills as rows finish
    completions.py          prompts in any format to completion texts, the cheapest way
"""
