"""The network: read these files in this order to understand a GPT-2 and a Llama.

    layers.py    positions, the causal mask, attention (reference and SDPA), norms, MLPs
    kv_cache.py  what attention remembers between calls: the KV cache, a prefix rows share
    gpt.py       the decoder that stacks them, one class for both families (ModelConfig chooses)
    linear.py    the Linear every weight matrix is, with a fast CPU kernel beside the reference
    lora.py      low-rank adapters on those linears: W x + s B A x, merge and unmerge
"""
