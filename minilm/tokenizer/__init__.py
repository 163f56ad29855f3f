"""The tokenizer: a byte-level BPE trainer and the Tokenizer that encodes and decodes with it.

    bpe.py        the merge loop, a simple reference trainer first, then the fast incremental one
    tokenizer.py  Tokenizer: train, encode (special tokens only when allowed), decode, stream-decode
    files.py      its files: a readable JSON of our own, and Hugging Face's tokenizer.json
"""
from minilm.tokenizer.files import TokenizerFileError
from minilm.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer", "TokenizerFileError"]
