#!/usr/bin/env python3
"""Writes regex_golden.json: texts judged against regular expressions by Python's `re`
(re.fullmatch for "whole", re.search for "search"), the outside reference for
tests/byte_dfa_test.cc.

For each pattern: matches drawn from the pattern's parse tree (re._parser), texts mutated from them
(a character replaced, inserted or dropped; a truncation), and random texts. Each text gets `valid`
(Python's verdict) and `exact`: the text is ASCII without \\r or \\x1c-\\x1f (nor, searched, a final
\\n), where the automaton must agree with Python both ways; elsewhere (Python's Unicode-wide \\d,
\\w and \\s, its `.` that takes \\r, its `$` before a final \\n) the automaton takes a subset, and
the test checks only that whatever it takes Python takes too.

  /usr/bin/python3 tests/data/regex/make_regex_golden.py
"""
import json
import os
import random
import re
import sys
from re import _constants as C
from re import _parser

PATTERNS = [
    ("whole", r"[a-z]+@[a-z]+\.(com|org)"),
    ("whole", r"\d{3}-\d{4}"),
    ("whole", r"(ab|a)*c?"),
    ("whole", r"[^aeiou ]{2,5}"),
    ("whole", r"(?:yes|no|maybe)!?"),
    ("whole", r"\w+\s\w+"),
    ("whole", r"[A-Z][a-z]*( [A-Z][a-z]*){0,2}"),
    ("whole", r"-?(0|[1-9]\d*)(\.\d+)?"),
    ("whole", "é+[日本]?😀*"),
    ("whole", r"\x41\u00e9[\-\]x]"),
    ("whole", r"(?P<year>\d{4})-(0[1-9]|1[0-2])"),
    ("whole", r".{2,3}"),
    ("whole", r"[^\d]x"),
    ("whole", r"\D\W\S"),
    ("whole", r"a{2}b{1,}c{0,2}"),
    ("whole", r"(a|b)*?abb"),
    ("whole", r""),
    ("whole", r"a|"),
    ("whole", r"[^a-c]+"),
    ("whole", r"^(\(\d\)|[.$*+?{}])+$"),
    ("search", r"abc"),
    ("search", r"^abc"),
    ("search", r"abc$"),
    ("search", r"^a.c$"),
    ("search", r"^\d+$|^x"),
    ("search", r"[0-9]{2}"),
    ("search", r"^[A-Za-z_][A-Za-z0-9_]*$"),
]

POOL = "abcxyzABZ019_-.@ !?$(){}*+é日😀\t\n\r\x1c"


def draw(items, rng):
    """A text drawn from a parsed pattern (not always a match: Python judges it)."""
    out = []
    for op, av in items:
        if op is C.LITERAL:
            out.append(chr(av))
        elif op is C.NOT_LITERAL:
            out.append(rng.choice([c for c in POOL if ord(c) != av]))
        elif op is C.ANY:
            out.append(rng.choice(POOL.replace("\n", "")))
        elif op is C.IN:
            out.append(draw_in(av, rng))
        elif op is C.BRANCH:
            out.append(draw(rng.choice(av[1]), rng))
        elif op is C.SUBPATTERN:
            out.append(draw(av[-1], rng))
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
            lo, hi, sub = av
            hi = min(hi, lo + 3)
            out.append("".join(draw(sub, rng) for _ in range(rng.randint(lo, hi))))
        elif op is C.AT:
            pass
        else:
            raise ValueError(op)
    return "".join(out)


def draw_in(items, rng):
    if items and items[0][0] is C.NEGATE:
        for _ in range(100):
            c = rng.choice(POOL)
            if re.fullmatch("[" + "".join(re_item(i) for i in items[1:]) + "]", c) is None:
                return c
        return "~"
    op, av = rng.choice(items)
    if op is C.LITERAL:
        return chr(av)
    if op is C.RANGE:
        return chr(rng.randint(av[0], av[1]))
    if op is C.CATEGORY:
        return rng.choice({C.CATEGORY_DIGIT: "0189", C.CATEGORY_WORD: "aZ_9", C.CATEGORY_SPACE: " \t\n",
                           C.CATEGORY_NOT_DIGIT: "a ", C.CATEGORY_NOT_WORD: " -", C.CATEGORY_NOT_SPACE: "a1"}[av])
    raise ValueError(op)


def re_item(item):
    op, av = item
    if op is C.LITERAL:
        return re.escape(chr(av))
    if op is C.RANGE:
        return re.escape(chr(av[0])) + "-" + re.escape(chr(av[1]))
    if op is C.CATEGORY:
        return {C.CATEGORY_DIGIT: r"\d", C.CATEGORY_WORD: r"\w", C.CATEGORY_SPACE: r"\s", C.CATEGORY_NOT_DIGIT: r"\D",
                C.CATEGORY_NOT_WORD: r"\W", C.CATEGORY_NOT_SPACE: r"\S"}[av]
    raise ValueError(op)


def mutate(text, rng):
    t = list(text)
    at = rng.randrange(len(t) + 1)
    op = rng.randrange(4)
    if op == 0 and t and at < len(t):
        t[at] = rng.choice(POOL)
    elif op == 1:
        t.insert(at, rng.choice(POOL))
    elif op == 2 and t and at < len(t):
        del t[at]
    else:
        del t[at:]
    return "".join(t)


def exact(text, mode):
    if any(ord(c) > 0x7F or c == "\r" or 0x1C <= ord(c) <= 0x1F for c in text):
        return False
    return not (mode == "search" and text.endswith("\n"))


def main():
    rng = random.Random(11)
    cases = []
    for mode, pattern in PATTERNS:
        compiled = re.compile(pattern)
        judge = compiled.fullmatch if mode == "whole" else compiled.search
        tree = list(_parser.parse(pattern))
        texts = set()
        for _ in range(40):
            t = draw(tree, rng)
            if mode == "search" and rng.random() < 0.5:
                t = draw(tree, rng) + t + "".join(rng.choice(POOL) for _ in range(rng.randint(0, 3)))
            texts.add(t)
            texts.add(mutate(t, rng))
        for _ in range(20):
            texts.add("".join(rng.choice(POOL) for _ in range(rng.randint(0, 6))))
        rows = [{"text": t, "valid": judge(t) is not None, "exact": exact(t, mode)} for t in sorted(texts)]
        cases.append({"pattern": pattern, "mode": mode, "texts": rows})
    out = {"generator": "tests/data/regex/make_regex_golden.py", "python": sys.version.split()[0], "cases": cases}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regex_golden.json")
    with open(path, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n = sum(len(c["texts"]) for c in cases)
    v = sum(r["valid"] for c in cases for r in c["texts"])
    print(f"{len(cases)} patterns, {n} texts, {v} valid -> {path}")


if __name__ == "__main__":
    main()
