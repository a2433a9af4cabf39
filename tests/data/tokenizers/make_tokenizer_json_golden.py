#!/usr/bin/env python3
"""Writes tokenizer_json_golden.json: what Hugging Face tokenizers (the library vLLM's and TGI's
fast tokenizers are) encode and decode with the tokenizer.json files here, as given and in variants
that change a few fields, the outside reference for the project's tokenizer.json reader
(tests/tokenizer_test.cc applies the same changes to the same files).

A variant: `file`, `overrides` (top-level fields replaced: normaliser, pre-tokenizer, added
tokens), `model_overrides` (fields of "model" replaced) and `added_tokens` (appended, as a
fine-tune's ChatML tokens past the base vocabulary are). Per text:
the ids and character offsets with special tokens written in the text recognised
(`special`: true, what `encode` does) and not (false, tokenizers' encode_special_tokens, where the
text of a special token is encoded as text; non-special added tokens are still split out); no BOS
(the project adds it from tokenizer_config.json). Per id sequence: the decoded text with
skip_special_tokens true and false.

    pip install tokenizers; python3 tests/data/tokenizers/make_tokenizer_json_golden.py
"""
import json
import os
import random

import tokenizers

from make_sentencepiece_golden import PARTS

HERE = os.path.dirname(os.path.abspath(__file__))
CHATML = [
    {"id": 32000, "content": "<|im_end|>", "single_word": False, "lstrip": False, "rstrip": False,
     "normalized": False, "special": True},
    {"id": 32001, "content": "<|im_start|>", "single_word": False, "lstrip": False, "rstrip": False,
     "normalized": False, "special": False},
]
# v1's added tokens with <unk> not special: its text stays in decoded text.
V1_UNK_TEXT = [
    {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": i > 0}
    for i, t in enumerate(["<unk>", "<s>", "</s>"])]
# Added tokens inside one another: special "<|im" within special "<|im_start|>", non-special "im_"
# (normalized: with no normaliser, the text itself) within both; a special "🦜".
NESTED = [
    {"id": 32768, "content": "<|im_start|>", "single_word": False, "lstrip": False, "rstrip": False,
     "normalized": False, "special": True},
    {"id": 32769, "content": "<|im", "single_word": False, "lstrip": False, "rstrip": False,
     "normalized": False, "special": True},
    {"id": 32770, "content": "im_", "single_word": False, "lstrip": False, "rstrip": False,
     "normalized": True, "special": False},
    # Past the vocabulary, so never a piece of the BPE: as text, its bytes.
    {"id": 32771, "content": "\U0001F99C", "single_word": False, "lstrip": False, "rstrip": False,
     "normalized": False, "special": True},
]
VARIANTS = [
    {"name": "v1", "file": "mistral-v1.tokenizer.json", "overrides": {}, "added_tokens": []},
    {"name": "v3", "file": "mistral-v3.tokenizer.json", "overrides": {}, "added_tokens": []},
    {"name": "v1-chatml", "file": "mistral-v1.tokenizer.json", "overrides": {"added_tokens": V1_UNK_TEXT},
     "added_tokens": CHATML},
    {"name": "v3-nested", "file": "mistral-v3.tokenizer.json", "overrides": {}, "added_tokens": NESTED},
    # A word in the vocabulary is its token, unmerged (byte and control pieces' texts too).
    {"name": "v1-ignore-merges", "file": "mistral-v1.tokenizer.json", "overrides": {},
     "model_overrides": {"ignore_merges": True}, "added_tokens": []},
    # An older file's Metaspace: add_prefix_space (prepend always) and split by default.
    {"name": "v3-metaspace-split", "file": "mistral-v3.tokenizer.json",
     "overrides": {"pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True}},
     "added_tokens": []},
    # Score-ranked merges behind transformers 5's Metaspace ("▁" before the text's first part only,
    # and not where it starts with a space).
    {"name": "v1-metaspace-first", "file": "mistral-v1.tokenizer.json",
     "overrides": {"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                                                         "prepend_scheme": "first", "split": False}},
     "added_tokens": []},
]
EXTRA_PARTS = ["<|im_start|>", "<|im_end|>", "<|im_start", "[TOOL_CALLS]", " [INST]", "    ", "\u2581", "x  y", "<|im",
               "xim_y", "<0x41>", "\u2581the"]


def texts(rng):
    out = ["", " ", "  ", "a", " a", "a ", "a  b", "  a  b   c ", "\n", "x\n\n y", "Hello world",
           "def f():\n    return 1", "<s> [INST] hi [/INST]", "<s>[INST]x[/INST]", "[INST]  y", "<|im_start|>user\nhi<|im_end|>\n",
           "<|im_start|> <|im_end|>  <|im_start|>", "\u2581a \u2581\u2581b"]
    for _ in range(70):
        s = ""
        for _ in range(rng.randint(1, 8)):
            s += rng.choice(PARTS + EXTRA_PARTS) + rng.choice(["", " ", " ", "  ", "\n"])
        if rng.random() < 0.3:
            s = rng.choice([" ", "  ", "\n"]) + s
        out.append(s)
    return out


def id_sequences(tok, rng):
    n = tok.get_vocab_size(with_added_tokens=True)
    added = sorted(tok.get_added_tokens_decoder())
    byte = [tok.token_to_id("<0x%02X>" % b) for b in range(256)]
    utf8 = [byte[b] for b in "é🦜".encode()]
    space = byte[0x20]
    out = [[], utf8, utf8[:-1], added[:3] + [n - 1], [space], [space, 300], [added[0], space, 300]]
    for _ in range(60):
        seq = []
        for _ in range(rng.randint(1, 10)):
            r = rng.random()
            if r < 0.55:
                seq.append(rng.randrange(n))
            elif r < 0.7:
                seq.append(rng.choice(byte))
            elif r < 0.8:
                seq.extend(utf8[: rng.randint(1, len(utf8))])
            else:
                seq.append(rng.choice(added))
        out.append(seq)
    return out


def variant_tokenizer(v):
    with open(os.path.join(HERE, v["file"]), encoding="utf-8") as f:
        d = json.load(f)
    d.update(v["overrides"])
    d["model"].update(v.get("model_overrides", {}))
    d["added_tokens"].extend(v["added_tokens"])
    return tokenizers.Tokenizer.from_str(json.dumps(d))


def main():
    rng = random.Random(5)
    golden = {"generator": f"make_tokenizer_json_golden.py, tokenizers {tokenizers.__version__}", "variants": []}
    for v in VARIANTS:
        tok = variant_tokenizer(v)
        cases = []
        for t in texts(rng):
            for special in (True, False):
                tok.encode_special_tokens = not special
                e = tok.encode(t, add_special_tokens=False)
                cases.append({"text": t, "special": special, "ids": e.ids, "offsets": [list(o) for o in e.offsets]})
        tok.encode_special_tokens = False
        decodes = []
        for ids in id_sequences(tok, rng):
            for skip in (True, False):
                decodes.append({"ids": ids, "skip_special": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
        golden["variants"].append(dict(v, model_overrides=v.get("model_overrides", {}), encode=cases, decode=decodes))
    with open(os.path.join(HERE, "tokenizer_json_golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
