"""Writes special_tokens.json: how transformers encodes texts with special tokens written out (what a
rendered chat template looks like) with Mistral's v1 SentencePiece model (Mixtral 8x7B), for
tests/tokenizer_test.cc (Tokenizer::EncodeWithSpecialTokens must give the same ids). The v3 model is
left out here: its Hub tokenizers are not legacy (no "▁" after a special token), and the legacy
normaliser over its converted BPE splits runs of spaces differently from SentencePiece; its
non-legacy encoding is checked against mistral-common instead (make_v3_chat_golden.py).

Run with transformers (5.x), tokenizers and sentencepiece installed:
    python3 tests/data/tokenizers/make_special_tokens_golden.py
The model is loaded through AutoTokenizer from a folder holding it as tokenizer.model; its control
pieces (<unk>, <s>, </s>) are special tokens there. transformers 5 builds
a non-legacy Metaspace pre-tokenizer for a bare tokenizer.model, while the tokenizer.json of Mixtral
8x7B / 8x22B v0.1 on the Hub is legacy (normalizer: Prepend "▁", Replace " " -> "▁"; no
pre-tokenizer: a "▁" before every piece of text, the text between special tokens included), so the
backend is set to that before encoding. Each text is encoded without adding BOS/EOS.
"""
import json
import os

import transformers

import hf_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TEXTS = [
    "<s>[INST] What is the capital of France? [/INST]",
    "<s>[INST] Hi there [/INST] Hello! How can I help?</s>[INST] Tell me a joke.\nA short one. [/INST]",
    "<s>[INST] You are terse.\n\nSummarise: « naïve café » – 日本語 🙂 [/INST]",
    "<s></s><s>",
    "plain text without any special token",
    "  two leading spaces<s>after</s>  and trailing  ",
    "a<s>b</s>c<unk>d",
    "<s [INST]> not a token, <s>> and <</s>",
    "[AVAILABLE_TOOLS] [{\"type\": \"function\"}][/AVAILABLE_TOOLS][INST] Weather? [/INST][TOOL_CALLS]",
    "\n<s>\n[INST]\n",
    "",
]


def main():
    out = {"generator": f"make_special_tokens_golden.py, transformers {transformers.__version__}", "models": {}}
    for name in ["mistral-v1.model"]:
        backend = hf_tokenizer.make_legacy(hf_tokenizer.from_model_file(os.path.join(HERE, name)).backend_tokenizer)
        out["models"][name] = [{"text": t, "ids": backend.encode(t, add_special_tokens=False).ids} for t in TEXTS]
    with open(os.path.join(HERE, "special_tokens.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
