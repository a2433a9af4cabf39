#!/usr/bin/env python3
"""Writes pydantic_golden.json: the JSON schemas Pydantic writes for typical models (nested models,
Optional fields, enums, Literal tags, discriminated unions, dict and tuple fields, dates, UUIDs,
patterns and bounds), instances of them as Pydantic dumps them, and texts mutated from those, each
judged by Python's jsonschema (Draft 2020-12, formats checked) and by Pydantic itself. The outside
reference for tests/json_schema_test.cc's Pydantic case: schemas as users send them.

Each text gets `valid` (jsonschema and Pydantic both accept it) and `canonical` (an instance as
Pydantic dumps it, compact or indented: the grammar must accept it).

  python3 tests/data/json_schema/make_pydantic_golden.py
(python3-pydantic, python3-jsonschema, and rfc3987 from PyPI, without which jsonschema does not check
"uri": python3 -m venv --system-site-packages V && V/bin/pip install rfc3987)
"""
import datetime
import enum
import importlib.metadata
import json
import os
import random
import sys
import uuid
from typing import Dict, List, Literal, Optional, Tuple, Union

import jsonschema
import pydantic
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_schema_golden import mutate  # noqa: E402  (the same byte mutations as the schema golden)
from pydantic import AnyUrl, BaseModel, Field, conint, constr


class Color(str, enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Address(BaseModel):
    street: str = Field(max_length=24, description="street and number")
    zip: constr(pattern=r"^\d{5}$")
    country: Literal["FR", "IT", "DE"] = "IT"


class Person(BaseModel):
    name: str = Field(min_length=1, max_length=16)
    age: conint(ge=0, le=130)
    born: datetime.date
    favourite: Color
    address: Optional[Address] = None
    tags: List[str] = Field(default_factory=list, max_length=3)
    score: float = Field(ge=0, le=1, description="a probability")


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: conint(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Visit(BaseModel):
    id: uuid.UUID
    at: datetime.datetime
    pet: Union[Cat, Dog] = Field(discriminator="kind")
    counts: Dict[str, conint(gt=0)] = {}
    span: Tuple[int, str]
    note: Optional[str] = Field(default=None, max_length=10)
    site: Optional[AnyUrl] = None


MODELS = {"person": Person, "visit": Visit}

UTC = datetime.timezone.utc
PLUS = datetime.timezone(datetime.timedelta(hours=5, minutes=30))


def people(rng):
    for _ in range(40):
        yield Person(
            name=rng.choice(["Ro", "Juliet", "Mercutio", "é日"]), age=rng.choice([0, 14, 130, rng.randint(0, 130)]),
            born=datetime.date(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28)),
            favourite=rng.choice(list(Color)),
            address=rng.choice([None, Address(street="Via Capello 23", zip="37121"),
                                Address(street="Rue X", zip="75001", country="FR")]),
            tags=rng.sample(["a", "bb", "c\"d", "e\\f"], rng.randint(0, 3)),
            score=rng.choice([0, 1, 0.5, 0.125, round(rng.random(), 3)]))


def visits(rng):
    for _ in range(40):
        yield Visit(
            id=uuid.UUID(int=rng.getrandbits(128)),
            at=datetime.datetime(rng.randint(1900, 2100), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                                 rng.randint(0, 59), rng.randint(0, 59), rng.choice([0, 250000]),
                                 tzinfo=rng.choice([UTC, PLUS])),
            pet=rng.choice([Cat(kind="cat", lives=rng.randint(0, 9)), Dog(kind="dog", good=rng.random() < 0.5)]),
            counts=rng.choice([{}, {"bones": 3}, {"a": 1, "b": 12}]),
            span=(rng.randint(-50, 50), rng.choice(["x", "yz"])),
            note=rng.choice([None, "short", "tenletters"]),
            site=rng.choice([None, "https://example.com/a/b?q=1&r=%20#top", "ftp://files.example.org:21/x.txt",
                             "http://10.0.0.1:8080/"]))


def judge(model, schema, text):
    try:
        value = json.loads(text)
    except (ValueError, UnicodeError):
        return False
    if not jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).is_valid(value):
        return False
    try:
        model.model_validate_json(text, strict=False)
    except pydantic.ValidationError:
        return False
    return True


def main():
    assert "uri" in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers, "install rfc3987 (see above)"
    rng = random.Random(25)
    cases = []
    for name, model in MODELS.items():
        schema = model.model_json_schema()
        texts = {}
        instances = people(rng) if model is Person else visits(rng)
        for inst in instances:
            compact = inst.model_dump_json()
            for text in (compact, json.dumps(json.loads(compact), indent=2, ensure_ascii=False)):
                assert judge(model, schema, text), (name, text)
                texts[text] = True
        canonical = list(texts)
        for _ in range(700):
            m = mutate(rng.choice(canonical), rng)
            if m is None or any("\udc80" <= ch <= "\udcff" for ch in m):
                continue
            texts.setdefault(m, False)
        cases.append({"name": "pydantic_" + name, "schema": schema,
                      "texts": [{"text": t, "canonical": c, "valid": judge(model, schema, t)} for t, c in texts.items()]})
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pydantic_golden.json")
    with open(out, "w") as f:
        json.dump({"generator": "make_pydantic_golden.py", "pydantic": pydantic.VERSION,
                   "jsonschema": importlib.metadata.version("jsonschema"), "cases": cases}, f, indent=1, ensure_ascii=False)
    for c in cases:
        print(c["name"], len(c["texts"]), "texts,", sum(t["valid"] for t in c["texts"]), "valid")


if __name__ == "__main__":
    main()
