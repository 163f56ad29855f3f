"""Small decoders the model and generation tests share."""
from dataclasses import replace

import torch

from minilm.config import ModelConfig
from minilm.model.gpt import GPT


# A Llama-shaped decoder at test size: every choice that differs from GPT-2's.
LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", mlp_hidden=48, n_kv_head=1, bias=False,
             tie_embeddings=False)


def make_model(seed=0, attention="sdpa", **overrides):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32, attention=attention)
    return GPT(replace(config, **overrides)).eval()
