"""Hugging Face tokenizers made from a bare SentencePiece tokenizer.model, as the make_*_golden.py
scripts here need them (transformers 5.x, tokenizers and sentencepiece installed)."""
import json
import os
import shutil
import tempfile

from tokenizers import normalizers
from transformers import AutoTokenizer

# What a Mistral tokenizer_config.json names; its control pieces (<unk>, <s>, </s>) become special tokens.
CONFIG = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def from_model_file(path):
    """transformers' tokenizer of a folder holding only `path` as tokenizer.model (and CONFIG)."""
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(path, os.path.join(d, "tokenizer.model"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(CONFIG, f)
        return AutoTokenizer.from_pretrained(d)


def make_legacy(backend):
    """transformers 5 builds a non-legacy Metaspace pre-tokenizer for a bare tokenizer.model; Mixtral
    8x7B / 8x22B v0.1's tokenizer.json on the Hub is legacy (normalizer: Prepend "▁", Replace " " ->
    "▁"; no pre-tokenizer: a "▁" before every piece of text, the text between special tokens
    included). Sets `backend` (a tokenizers.Tokenizer) to that, and returns it."""
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    return backend
