#!/usr/bin/env python3
"""Writes sentencepiece_golden.json: what the SentencePiece library (its Python binding) encodes
and decodes with the Mistral v1 and v3 vocabularies and the default model's, the outside reference
for worker/sentencepiece_bpe.cc (tests/tokenizer_test.cc).

Texts: words, runs of spaces at the start, middle and end, tabs and newlines, digits, accents, CJK,
emoji, combining marks, and what looks like special tokens ("<s>", "[INST]", "[REFERENCE_DOC_3]");
encoded without BOS/EOS. Id sequences: random mixes of normal, byte, control and unknown pieces
(a byte run cut short included), decoded.

  pip install sentencepiece; python3 tests/data/tokenizers/make_sentencepiece_golden.py
"""
import json
import os
import random

import sentencepiece

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {
    "mistral-v1": os.path.join(HERE, "mistral-v1.model"),
    "mistral-v3": os.path.join(HERE, "mistral-v3.model"),
    "shakespeare-moe": os.path.join(HERE, "..", "..", "..", "models", "shakespeare-moe", "tokenizer.model"),
}
PARTS = ["the", "Mixtral", "of", "experts", "ROMEO", ":", "!", "?", ",", ".", "0", "12", "345", "2026", "é", "naïve",
         "Ελληνικά", "日本語", "你好", "한국어", "🦜", "👩‍💻", "e\u0301", "\u00a0", "<s>", "</s>", "[INST]", "[/INST]",
         "[REFERENCE_DOC_3]", "<unk>", "<0x41>", "{\"a\": 1}", "def f(x):", "\t", "\n", "\r\n", "  ", "   ", "'s",
         "don't", "A", "ZZZZ", "https://example.com/x?y=1", "ὕδωρ", "∑", "\u200b", "Ⅻ"]


def texts(rng):
    out = ["", " ", "  ", "a", " a", "a ", "  a  b   c ", "\n", "\nx", "x\n\n y", "Hello world", "1234567890"]
    for _ in range(160):
        n = rng.randint(1, 8)
        s = ""
        for _ in range(n):
            s += rng.choice(PARTS) + rng.choice(["", " ", " ", "  ", "\n"])
        if rng.random() < 0.3:
            s = rng.choice([" ", "  ", "\n"]) + s
        out.append(s)
    return out


def id_sequences(sp, rng):
    n = sp.get_piece_size()
    kinds = {"byte": [i for i in range(n) if sp.is_byte(i)], "control": [i for i in range(n) if sp.is_control(i)],
             "unk": [sp.unk_id()], "normal": [i for i in range(n) if not (sp.is_byte(i) or sp.is_control(i)
                                                                          or sp.is_unknown(i) or sp.is_unused(i))]}
    space = [i for i in kinds["normal"] if sp.id_to_piece(i).startswith("\u2581")]
    utf8 = [sp.piece_to_id("<0x%02X>" % b) for b in "é🦜".encode()]
    out = [[], utf8, utf8[:-1], utf8[2:]]
    for _ in range(200):
        seq = []
        for _ in range(rng.randint(1, 10)):
            r = rng.random()
            if r < 0.35:
                seq.append(rng.choice(space))
            elif r < 0.6:
                seq.append(rng.choice(kinds["normal"]))
            elif r < 0.8:
                seq.append(rng.choice(kinds["byte"]))
            elif r < 0.9:
                seq.extend(utf8[: rng.randint(1, len(utf8))])
            elif r < 0.97:
                seq.append(rng.choice(kinds["control"]))
            else:
                seq.append(sp.unk_id())
        out.append(seq)
    return out


def main():
    rng = random.Random(11)
    golden = {"sentencepiece": sentencepiece.__version__, "models": {}}
    for name, path in MODELS.items():
        sp = sentencepiece.SentencePieceProcessor(model_file=path)
        golden["models"][name] = {
            "encode": [{"text": t, "ids": sp.encode(t)} for t in texts(rng)],
            "decode": [{"ids": s, "text": sp.decode(s)} for s in id_sequences(sp, rng)],
        }
    with open(os.path.join(HERE, "sentencepiece_golden.json"), "w") as f:
        json.dump(golden, f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
