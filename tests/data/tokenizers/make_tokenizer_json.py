#!/usr/bin/env python3
"""Writes the two Hugging Face tokenizer.json files tokenizer_json_golden.json is made from, each the
conversion transformers makes of a SentencePiece model here:

- mistral-v1.tokenizer.json: mistral-v1.model converted by transformers 4.36.2 (the release Mixtral
  8x7B's tokenizer.json on the Hub dates from, December 2023): the legacy normaliser (Prepend "▁",
  Replace " " -> "▁"), no pre-tokenizer, merges ranked by the merged piece's SentencePiece score (so
  runs of spaces merge last, as SentencePiece encodes them), <unk> <s> </s> as added special tokens,
  a post-processor that prepends <s>.
- mistral-v3.tokenizer.json: mistral-v3.model converted by transformers 5.x: no normaliser, a
  Metaspace pre-tokenizer (prepend_scheme "first", split false), merges ranked by the merged piece's
  id (so "▁" "▁" merges first and runs of spaces differ from SentencePiece's), every control piece
  ([INST], [TOOL_CALLS], ...) an added special token, unk_token null, no post-processor BOS.

Run it twice, once under each transformers (it writes the file its version makes):
    pip install "transformers==4.36.2" "tokenizers==0.15.2" sentencepiece protobuf; python3 make_tokenizer_json.py
    pip install "transformers>=5" tokenizers sentencepiece; python3 make_tokenizer_json.py
"""
import json
import os
import shutil
import tempfile

import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def main():
    major = int(transformers.__version__.split(".")[0])
    name = "mistral-v1" if major < 5 else "mistral-v3"
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(os.path.join(HERE, name + ".model"), os.path.join(d, "tokenizer.model"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(CONFIG, f)
        if major < 5:
            tok = transformers.LlamaTokenizerFast.from_pretrained(d, from_slow=True, legacy=True)
        else:
            tok = transformers.AutoTokenizer.from_pretrained(d)
        # v3 compact: its 771 added tokens and array merges take 3.7 MB pretty-printed.
        tok.backend_tokenizer.save(os.path.join(HERE, name + ".tokenizer.json"), pretty=major < 5)


if __name__ == "__main__":
    main()
