"""Writes offsets_golden.json: the ids and character offsets Hugging Face tokenizers give texts (the
places TGI's POST /tokenize and /chat_tokenize answer, there in bytes: each token's id with the
[start, stop) of the input it came from), for tests/tokenizer_test.cc (Tokenizer::
EncodeWithSpecialTokens' spans must give the same) and the HTTP front's end-to-end test. Special tokens written in the text are recognised, as a fast tokenizer's encode does; the
legacy normaliser of Mixtral 8x7B's tokenizer.json (Prepend "▁", Replace " " -> "▁", no
pre-tokenizer; see make_special_tokens_golden.py) is set before encoding, and the BOS that
tokenizer.json's post-processor adds ("<s>" $A) is added with the offsets it gives it.

Run with transformers (5.x), tokenizers and sentencepiece installed:
    python3 tests/data/tokenizers/make_offsets_golden.py
"""
import json
import os

import transformers
from tokenizers import processors

import hf_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
MODELS = {
    "mistral-v1.model": os.path.join(HERE, "mistral-v1.model"),
    "shakespeare-moe": os.path.join(ROOT, "models", "shakespeare-moe", "tokenizer.model"),
}
TEXTS = [
    "Hello world",
    "ROMEO: speak again, bright angel!",
    # Runs of spaces at the ends only: inside a text the tokenizer transformers 5 converts (merges
    # ranked by id) and SentencePiece split a run differently (ids, not offsets; tokenizer.model's ids
    # are SentencePiece's, and so are those of Mixtral's own score-ranked tokenizer.json:
    # tokenizer_json_golden.json). The same holds for a space right after a special token (legacy
    # "▁" + " "): "<s> hi" is SentencePiece's "▁" "▁hi" here, transformers 5's "▁▁" "hi".
    "  two leading spaces and two trailing  ",
    "naïve café – 日本語 🙂 ꙮ 𝄞",
    "\n\nnew\tlines\n",
    "<s>[INST] What is the capital of France? [/INST]",
    "a<s>b</s>c<unk>d",
    "<s [INST]> not a token, <s>> and <</s>",
    "x</s>",
    "<s>[INST] ROMEO: speak, good nurse [/INST]",  # tests/data/openai/chat_golden.json's first prompt_text
    " ",
    "",
]


def main():
    out = {"generator": f"make_offsets_golden.py, transformers {transformers.__version__}", "models": {}}
    for name, path in MODELS.items():
        backend = hf_tokenizer.make_legacy(hf_tokenizer.from_model_file(path).backend_tokenizer)
        bos = backend.token_to_id("<s>")
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
        cases = []
        for t in TEXTS:
            for add_bos in (False, True):
                e = backend.encode(t, add_special_tokens=add_bos)
                cases.append({"text": t, "add_bos": add_bos, "ids": e.ids, "offsets": [list(o) for o in e.offsets]})
        out["models"][name] = cases
    with open(os.path.join(HERE, "offsets_golden.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
