#!/usr/bin/env python3
"""Writes decode_golden.json: how Hugging Face tokenizers decode ids with special tokens among them,
with skip_special_tokens false (vLLM's request field of that name: the text shows "<s>", "</s>",
"[INST]", ...) and true, and how SentencePiece's own Python binding decodes the same ids (what the
project's decoder follows when special tokens are skipped). tests/tokenizer_test.cc checks
Tokenizer::Decode and StreamingDetokenizer against both.

    pip install transformers tokenizers sentencepiece; python3 tests/data/tokenizers/make_decode_golden.py

Each model is loaded through AutoTokenizer from a folder holding it as tokenizer.model, its control
pieces and <unk> registered as special tokens (the Hub's tokenizer.json files mark them so: <unk>,
<s>, </s> in v1, and [INST], [TOOL_CALLS], ... in v3). The decoder is the one of Mixtral 8x7B's
tokenizer.json on the Hub (Replace "▁" -> " ", ByteFallback, Fuse, Strip one leading space), which
is what transformers builds for a bare tokenizer.model too; it is set explicitly so a change of that
default cannot move the reference. Decoding goes through the tokenizers backend, without
transformers' clean_up_tokenization_spaces (false in Mixtral's tokenizer_config.json).
"""
import json
import os

import sentencepiece
import tokenizers
from tokenizers import decoders

import hf_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
# Each case: text (encoded by SentencePiece without BOS) and pieces given by name ({"piece": ...}).
COMMON = [
    [{"piece": "<s>"}, "Hello world"],
    ["Hello", {"piece": "</s>"}],
    [{"piece": "</s>"}, "Hello"],
    [{"piece": "<unk>"}, "a b", {"piece": "<unk>"}],
    [{"piece": "<s>"}, {"piece": "<s>"}, {"piece": "</s>"}],
    [{"piece": "<s>"}, " 日本語 🙂 naïve"],
    ["日本", {"piece": "</s>"}, "語"],
    ["  two leading spaces", {"piece": "<s>"}, "  and two more  "],
    ["\n", {"piece": "<s>"}, "\n"],
    ["x", {"piece": "<s>"}, "y", {"piece": "</s>"}, "z", {"piece": "<s>"}],
    [{"piece": "<s>"}, "[INST] What is the capital of France? [/INST]", "The capital is Paris.", {"piece": "</s>"}],
    [],
]
V3 = [
    [{"piece": "<s>"}, {"piece": "[INST]"}, "What is 2 + 2?", {"piece": "[/INST]"}, "4.", {"piece": "</s>"}],
    [{"piece": "[TOOL_CALLS]"}, "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]", {"piece": "</s>"}],
    [{"piece": "[AVAILABLE_TOOLS]"}, "[]", {"piece": "[/AVAILABLE_TOOLS]"}, {"piece": "[INST]"}, " hi", {"piece": "[/INST]"}],
]


def ids_of(case, sp):
    ids = []
    for part in case:
        if isinstance(part, dict):
            i = sp.piece_to_id(part["piece"])
            assert sp.id_to_piece(i) == part["piece"], part
            ids.append(i)
        else:
            ids.extend(sp.encode(part))
    return ids


def main():
    out = {"generator": f"make_decode_golden.py, tokenizers {tokenizers.__version__}, "
                        f"sentencepiece {sentencepiece.__version__}", "models": {}}
    for name, cases in [("mistral-v1.model", COMMON), ("mistral-v3.model", COMMON + V3)]:
        path = os.path.join(HERE, name)
        sp = sentencepiece.SentencePieceProcessor(model_file=path)
        special = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
        tok = hf_tokenizer.from_model_file(path)
        tok.add_special_tokens({"additional_special_tokens": [p for p in special if p not in ("<s>", "</s>", "<unk>")]},
                               replace_extra_special_tokens=False)
        assert len(tok) == sp.get_piece_size(), "registering the control pieces must not add tokens"
        backend = tok.backend_tokenizer
        backend.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        rows = []
        for case in cases:
            ids = ids_of(case, sp)
            rows.append({"ids": ids,
                         "keep_special": backend.decode(ids, skip_special_tokens=False),
                         "skip_special": backend.decode(ids, skip_special_tokens=True),
                         "sentencepiece": sp.decode(ids)})
        out["models"][name] = rows
    with open(os.path.join(HERE, "decode_golden.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
