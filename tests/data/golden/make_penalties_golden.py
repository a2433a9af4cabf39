#!/usr/bin/env python3
"""Reference greedy continuations of the golden tiny model under logits penalties, from transformers.

Writes tiny/penalties.json beside the checkpoint: for each case and golden prompt, the tokens that
transformers' MixtralForCausalLM (eager, float32, full recompute each step) chooses greedily and,
per step, the margin between the two best adjusted logits (a test compares tokens only while the
margin is clearly above float32 noise). Cases:
  repetition_1.3, repetition_0.8  generate(repetition_penalty=R): RepetitionPenaltyLogitsProcessor
                                  over prompt and output
  min_tokens_6                    generate(min_new_tokens=6, eos_token_id=[EOS, X]): X is an extra
                                  end id (the request's stop_token_ids), held back with EOS for 6
                                  tokens, then ending the output when it comes
  logit_bias                      generate(sequence_bias={(id,): bias}, repetition_penalty=1.1):
                                  SequenceBiasLogitsProcessor, applied before the repetition penalty
                                  (as vLLM applies logit_bias before its penalties)
  frequency_presence,             no transformers processor exists for OpenAI's frequency and presence
  penalties_combined              penalties: a torch loop applies vLLM's rule to transformers' raw
                                  logits (the repetition penalty over prompt and output, then
                                  logits -= f * count, then -= p * (count > 0), over the output):
                                  f = 1.5, p = 0.8 alone; repetition 1.2 with f = 0.5, p = 0.3

Usage: make_penalties_golden.py [GOLDEN_DIR (default: tiny beside this script)]
Needs torch and transformers (CPU is enough: the tiny model is 4 layers of hidden 128).
"""
import json
import os
import sys

import torch
from transformers import MixtralForCausalLM

STEPS = 24


def load(d):
    try:
        model = MixtralForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        model = MixtralForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def margin(scores):
    top = scores.float().topk(2).values
    return float(top[0] - top[1])


@torch.no_grad()
def via_generate(model, prompt, eos, **kw):
    ids = torch.tensor([prompt])
    out = model.generate(ids, do_sample=False, max_new_tokens=STEPS, eos_token_id=eos, pad_token_id=eos[0],
                         output_scores=True, return_dict_in_generate=True, **kw)
    tokens = out.sequences[0, len(prompt):].tolist()
    return tokens, [margin(s[0]) for s in out.scores]


@torch.no_grad()
def via_vllm_rule(model, prompt, eos, repetition, frequency, presence):
    seq, margins = list(prompt), []
    for _ in range(STEPS):
        logits = model(torch.tensor([seq])).logits[0, -1].float()
        seen = torch.tensor(sorted(set(seq)))
        picked = logits[seen]
        logits[seen] = torch.where(picked < 0, picked * repetition, picked / repetition)
        output = seq[len(prompt):]
        if output:
            counts = torch.bincount(torch.tensor(output), minlength=logits.numel()).float()
            logits -= frequency * counts
            logits -= presence * (counts > 0).float()
        margins.append(margin(logits))
        tok = int(logits.argmax())
        seq.append(tok)
        if tok in eos:
            break
    return seq[len(prompt):], margins


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny")
    with open(os.path.join(d, "expected.json")) as f:
        golden = json.load(f)
    with open(os.path.join(d, "config.json")) as f:
        eos = [json.load(f)["eos_token_id"]]
    model = load(d)
    cases = []
    for p, prompt in enumerate(golden["prompts"]):
        for r in (1.3, 0.8):
            tokens, margins = via_generate(model, prompt, eos, repetition_penalty=r)
            cases.append({"case": f"repetition_{r}", "prompt": p, "repetition_penalty": r, "tokens": tokens,
                          "margins": margins})
        # The extra end id: the plain greedy continuation's most frequent token in its first 12.
        plain = golden["greedy"][p][:12]
        extra = max(plain, key=plain.count)
        tokens, margins = via_generate(model, prompt, eos + [extra], min_new_tokens=6)
        cases.append({"case": "min_tokens_6", "prompt": p, "min_tokens": 6, "stop_token_ids": [extra],
                      "tokens": tokens, "margins": margins})
        # logit_bias: the plain greedy's first token pushed down, a token of its 3rd..8th pushed up.
        plain = golden["greedy"][p]
        bias = [[plain[0], -4.0], [plain[2 + p], 2.5]]
        tokens, margins = via_generate(model, prompt, eos, sequence_bias={(t,): b for t, b in bias},
                                       repetition_penalty=1.1)
        cases.append({"case": "logit_bias", "prompt": p, "logit_bias": bias, "repetition_penalty": 1.1,
                      "tokens": tokens, "margins": margins})
        tokens, margins = via_vllm_rule(model, prompt, eos, 1.0, 1.5, 0.8)
        cases.append({"case": "frequency_presence", "prompt": p, "frequency_penalty": 1.5, "presence_penalty": 0.8,
                      "tokens": tokens, "margins": margins})
        tokens, margins = via_vllm_rule(model, prompt, eos, 1.2, 0.5, 0.3)
        cases.append({"case": "penalties_combined", "prompt": p, "repetition_penalty": 1.2,
                      "frequency_penalty": 0.5, "presence_penalty": 0.3, "tokens": tokens, "margins": margins})
    out = {"generator": "make_penalties_golden.py: transformers MixtralForCausalLM, eager, float32, greedy",
           "max_tokens": STEPS, "cases": cases}
    with open(os.path.join(d, "penalties.json"), "w") as f:
        json.dump(out, f)
    for c in cases:
        print(c["case"], c["prompt"], len(c["tokens"]), "min margin %.2e" % min(c["margins"]))


if __name__ == "__main__":
    main()
