"""Writes chat_golden.json: what transformers makes of chat conversations for the default model
(models/shakespeare-moe) with Mixtral-8x7B-Instruct's chat template
(tests/data/chat_templates/mistralai-Mixtral-8x7B-Instruct-v0.1.jinja), for
tests/e2e_openai_server_test.py: the rendered prompt (apply_chat_template), its token ids and the
greedy continuation of MixtralForCausalLM (float32, CPU), ids and text.

Run with torch, transformers (5.x), tokenizers and sentencepiece installed:
    python3 tests/data/openai/make_chat_golden.py
The tokenizer is the model's tokenizer.model, its backend set to the legacy Llama normaliser (a "▁"
before every piece of text between special tokens) as Mixtral's tokenizer.json on the Hub has it; see
tests/data/tokenizers/make_special_tokens_golden.py.
"""
import json
import os

import torch
import transformers
from tokenizers import normalizers
from transformers import AutoTokenizer, MixtralForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
MODEL = os.path.join(ROOT, "models", "shakespeare-moe")
TEMPLATE = os.path.join(ROOT, "tests", "data", "chat_templates", "mistralai-Mixtral-8x7B-Instruct-v0.1.jinja")
NEW_TOKENS = 24

CONVERSATIONS = [
    [{"role": "user", "content": "ROMEO: speak, good nurse"}],
    [{"role": "user", "content": "What says the king?"},
     {"role": "assistant", "content": "He bids thee come to court."},
     {"role": "user", "content": "Then I will go."}],
    [{"role": "user", "content": "JULIET:\nO Romeo, Romeo!"}],
]


def main():
    tok = AutoTokenizer.from_pretrained(MODEL)
    tok.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.backend_tokenizer.pre_tokenizer = None
    with open(TEMPLATE) as f:
        template = f.read()
    model = MixtralForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
    cases = []
    for messages in CONVERSATIONS:
        text = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        # An explicit attention mask: the prompt holds the pad id (EOS) after an assistant turn, which
        # generate() would otherwise mask out.
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.eos_token_id)
        new = out[0, len(ids):].tolist()
        cases.append({"messages": messages, "prompt_text": text, "prompt_ids": ids, "greedy_ids": new,
                      "greedy_text": tok.decode(new)})
    out = {"generator": f"make_chat_golden.py, transformers {transformers.__version__}, torch {torch.__version__}",
           "template": os.path.basename(TEMPLATE), "max_tokens": NEW_TOKENS, "cases": cases}
    with open(os.path.join(HERE, "chat_golden.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
