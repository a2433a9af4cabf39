#!/usr/bin/env python3
"""Writes schema_golden.json: JSON texts judged against JSON schemas by Python's jsonschema
(Draft 2020-12, formats checked), the outside reference for tests/json_schema_test.cc.

For each schema: canonical instances (drawn from the schema: properties in the schema's order,
optional ones sometimes left out, compact or indented, ASCII-escaped or not), instances changed
structurally (a property dropped or added, an item dropped, a member of another type), then texts
mutated from them (a byte replaced, inserted or dropped; properties reordered; a truncation). Each text
gets `valid` (Python's json reads it, with no NaN/Infinity, and the schema admits the value) and
`canonical` (a drawn instance, or a valid one changed structurally with its properties still in
the schema's order: the grammar must accept it).

  /usr/bin/python3 tests/data/json_schema/make_schema_golden.py   (python3-jsonschema)
"""
import importlib.metadata
import json
import os
import random

import jsonschema

SCHEMAS = [
    {"name": "person", "schema": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 12},
            "age": {"type": "integer"},
            "email": {"type": ["string", "null"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
            "role": {"enum": ["admin", "user", 3, None]},
            "score": {"type": "number"},
        },
        "required": ["name", "age"],
        "additionalProperties": False}},
    {"name": "tree", "schema": {
        "$defs": {"node": {"type": "object", "properties": {
            "value": {"type": "number"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["value"]}},
        "$ref": "#/$defs/node"}},
    {"name": "flags", "schema": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4}},
    {"name": "enums", "schema": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "reddish", "blue"]}, "n": {"const": 42}, "ok": {"type": "boolean"}},
        "required": ["color", "n"]}},
    {"name": "union", "schema": {
        "type": "object",
        "properties": {"v": {"anyOf": [
            {"type": "string", "maxLength": 3},
            {"type": "integer"},
            {"type": "object", "properties": {"a": {"type": "null"}}, "required": ["a"]}]}},
        "required": ["v"]}},
    {"name": "integer", "schema": {"type": "integer"}},
    {"name": "numbers_enum", "schema": {"enum": [1, 12, 123, "x"]}},
    {"name": "free_object", "schema": {"type": "object", "title": "anything"}},
    {"name": "formats", "schema": {
        "type": "object",
        "properties": {
            "day": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "ip": {"type": "string", "format": "ipv4"},
            "mail": {"type": "string", "format": "email"},
            "t": {"type": "string", "format": "time"}},
        "required": ["day", "id"],
        "additionalProperties": False}},
    {"name": "patterns", "schema": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
            "has_x": {"type": "string", "pattern": "x", "maxLength": 5},
            "word": {"type": "string", "pattern": "^\\w+$", "minLength": 2},
            "path": {"type": "string", "pattern": "^/[a-z/]*\"?$"}},
        "required": ["code"]}},
    {"name": "bounds", "schema": {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "delta": {"type": "integer", "exclusiveMinimum": -5, "exclusiveMaximum": 250},
            "big": {"type": "integer", "minimum": 1000},
            "neg": {"type": "integer", "maximum": -7},
            "p": {"type": "number", "minimum": 0, "maximum": 1},
            "t": {"type": "number", "minimum": -40, "maximum": 60},
            "above": {"type": "number", "minimum": 3},
            "below": {"type": "number", "maximum": -2}},
        "required": ["age", "p"]}},
    {"name": "bounded_top", "schema": {"type": "integer", "minimum": -20, "maximum": 300}},
    {"name": "tagged_union", "schema": {
        "$defs": {"search": {"type": "object", "properties": {
            "name": {"const": "search"},
            "parameters": {"type": "object", "properties": {"q": {"type": "string", "maxLength": 6}},
                           "required": ["q"]}},
            "required": ["name", "parameters"]}},
        "type": "array", "minItems": 1, "maxItems": 3,
        "items": {"anyOf": [
            {"type": "object", "properties": {
                "name": {"const": "weather"},
                "parameters": {"type": "object", "properties": {
                    "city": {"type": "string", "maxLength": 8}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                    "required": ["city"]}},
             "required": ["name", "parameters"]},
            {"$ref": "#/$defs/search"},
            {"type": "object", "properties": {"name": {"enum": ["stop", "wait"]}, "parameters": {"type": "null"}},
             "required": ["name"]},
            {"type": "null"}]}}},
    {"name": "dict_and_tuple", "schema": {
        "type": "object",
        "properties": {
            "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            "pair": {"type": "array", "prefixItems": [{"type": "string", "maxLength": 3}, {"type": "integer"},
                                                      {"type": "boolean"}], "items": False, "minItems": 2},
            "head": {"type": "array", "prefixItems": [{"type": "null"}], "items": {"type": "number"}, "maxItems": 3}},
        "required": ["counts", "pair"]}},
]

# Strings the "pattern" and "format" schemas above admit (ASCII: written raw by every dump style).
EXAMPLES = {
    "date": ["2024-02-28", "1999-12-31", "0001-01-01", "2023-04-30"],
    "date-time": ["2024-02-28T13:05:59Z", "2000-01-31T00:00:00.125+05:30"],
    "uuid": ["123e4567-e89b-12d3-a456-426614174000", "ABCDEF01-2345-6789-abcd-ef0123456789"],
    "ipv4": ["192.168.0.1", "8.8.8.8", "255.255.255.255", "0.0.0.0"],
    "email": ["a.b@example.com", "x@y"],
    "time": ["23:59:59Z", "00:00:00.5-08:00"],
    "^[A-Z]{2}-\\d{3}$": ["AB-123", "ZZ-000"],
    "x": ["x", "axb", "xxxxx"],
    "^\\w+$": ["ab", "a_9"],
    "^/[a-z/]*\"?$": ["/", "/usr/bin", "/a\""],
}

WORDS = ["a", "ab", "Ro", "é", "日本", "x\"y", "b\\c", "t\ta", "😀", ""]


def draw(schema, defs, rng, depth=0):
    """A value the schema admits (None when none drawn), in the shape the grammar writes."""
    if "$ref" in schema:
        return draw(defs[schema["$ref"].split("/")[-1]], defs, rng, depth + 1)
    if "anyOf" in schema:
        return draw(rng.choice(schema["anyOf"]), defs, rng, depth)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    t = schema.get("type")
    if isinstance(t, list):
        return draw(dict(schema, type=rng.choice(t)), defs, rng, depth)
    if t == "object":
        out = {}
        required = schema.get("required", [])
        props = schema.get("properties", {})
        if not props:
            extra = schema.get("additionalProperties")
            for k in range(rng.randint(0, 3)):
                out["k%d" % k] = draw(extra, defs, rng, depth + 1) if isinstance(extra, dict) and extra else \
                    rng.choice([1, "v", None, [True], {"z": 0.5}])
            return out
        for name, sub in props.items():
            if name in required or (depth < 3 and rng.random() < 0.6):
                out[name] = draw(sub, defs, rng, depth + 1)
        return out
    if t == "array" and "prefixItems" in schema:
        prefix = schema["prefixItems"]
        lo = schema.get("minItems", 0)
        hi = min(schema.get("maxItems", len(prefix) + 2), len(prefix) + (0 if schema.get("items") is False else 2))
        n = rng.randint(lo, max(lo, hi))
        return [draw(prefix[i] if i < len(prefix) else schema.get("items", {}), defs, rng, depth + 1) for i in range(n)]
    if t == "array":
        lo, hi = schema.get("minItems", 0), min(schema.get("maxItems", 3), 3)
        return [draw(schema.get("items", {}), defs, rng, depth + 1) for _ in range(rng.randint(lo, max(lo, hi)))]
    if t == "string" and ("pattern" in schema or "format" in schema):
        return rng.choice(EXAMPLES[schema.get("pattern", schema.get("format"))])
    if t == "string":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 8)
        while True:
            s = "".join(rng.choice(WORDS) for _ in range(rng.randint(0, 3)))
            if lo <= len(s) <= hi:
                return s
    if t == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -301) + 1)
        hi = schema.get("maximum", schema.get("exclusiveMaximum", lo + 601) - 1)
        return rng.choice([lo, hi, rng.randint(lo, hi)])
    if t == "number" and ("minimum" in schema or "maximum" in schema):
        lo = schema.get("minimum", schema.get("maximum", 0) - 1000)
        hi = schema.get("maximum", lo + 1000)
        return rng.choice([lo, hi, float(lo), float(hi), round(rng.uniform(lo, hi), 3)])
    if t == "number":
        return rng.choice([0, -1, 2.5, 1e-3, 123456.75, -0.0])
    if t == "boolean":
        return rng.random() < 0.5
    if t == "null":
        return None
    return rng.choice([1, "v", None, {"q": [1, 2]}])


def dump(value, rng):
    style = rng.randint(0, 2)
    if style == 0:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if style == 1:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=True)


def mutate(text, rng):
    b = bytearray(text.encode())
    for _ in range(rng.randint(1, 2)):
        if not b:
            break
        at = rng.randrange(len(b))
        op = rng.randrange(5)
        ch = rng.choice(b'{}[]":,0129-.etrufalsnxy \\\n')
        if op == 0:
            b[at] = ch
        elif op == 1:
            b.insert(at, ch)
        elif op == 2:
            del b[at]
        elif op == 3:
            del b[at:]
        else:
            return None
    return bytes(b).decode("utf-8", errors="surrogateescape")


def containers(value, out):
    """Every dict and list in value, value itself first."""
    if isinstance(value, (dict, list)):
        out.append(value)
        for v in (value.values() if isinstance(value, dict) else value):
            containers(v, out)
    return out


def mutate_value(value, rng):
    """The value with one structural change (a property dropped or added, an item dropped, a member
    replaced by a value of another type), properties still in their order, and whether a valid result
    must be accepted; None when none applies."""
    value = json.loads(json.dumps(value))
    targets = containers(value, [])
    if not targets:
        return None
    c = rng.choice(targets)
    if isinstance(c, dict):
        op = rng.randrange(3)
        if op == 0 and c:
            del c[rng.choice(list(c))]
        elif op == 1:
            # Valid where additionalProperties is absent, which the grammar reads strictly (only
            # the listed properties): not a text it must accept.
            c["zz"] = 1
            return value, False
        elif c:
            c[rng.choice(list(c))] = rng.choice([7, "s", None, True, [1], {"q": 1}, 2.5])
        else:
            return None
    else:
        if c and rng.random() < 0.5:
            del c[rng.randrange(len(c))]
        elif c:
            c[rng.randrange(len(c))] = rng.choice([7, "s", None, True, [1], {"q": 1}, 2.5])
        else:
            c.append(rng.choice([7, "s", None, True]))
    return value, True


def reject_constant(name):
    raise ValueError(name)


def judge(schema, text):
    try:
        value = json.loads(text, parse_constant=reject_constant)
    except (ValueError, UnicodeError):
        return False
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).is_valid(value)


def main():
    rng = random.Random(5)
    cases = []
    for entry in SCHEMAS:
        schema = entry["schema"]
        defs = schema.get("$defs", {})
        texts = {}
        canonical = []
        for _ in range(60):
            value = draw(schema, defs, rng)
            text = dump(value, rng)
            assert judge(schema, text), (entry["name"], text)
            canonical.append(text)
            texts[text] = True
        values = [json.loads(t) for t in canonical]
        for _ in range(150):
            # Structural changes keep the schema's order: what is valid must be accepted.
            m = mutate_value(rng.choice(values), rng)
            if m is None:
                continue
            text = dump(m[0], rng)
            if text not in texts:
                texts[text] = m[1] and judge(schema, text)
        for _ in range(400):
            base = rng.choice(canonical)
            m = mutate(base, rng)
            if m is None:  # reorder an object's properties: valid, but not in the schema's order
                try:
                    value = json.loads(base)
                except ValueError:
                    continue
                if isinstance(value, dict) and len(value) > 1:
                    items = list(value.items())
                    rng.shuffle(items)
                    m = json.dumps(dict(items))
                else:
                    continue
            if "\udc80" <= m <= "\udcff" or any("\udc80" <= ch <= "\udcff" for ch in m):
                continue  # not UTF-8 after the mutation: Python's json cannot read it as text
            texts.setdefault(m, False)
        cases.append({"name": entry["name"], "schema": schema,
                      "texts": [{"text": t, "canonical": c, "valid": judge(schema, t)} for t, c in texts.items()]})
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema_golden.json")
    with open(out, "w") as f:
        json.dump({"generator": "make_schema_golden.py", "jsonschema": importlib.metadata.version("jsonschema"),
                   "cases": cases}, f, indent=1, ensure_ascii=False)
    for c in cases:
        print(c["name"], len(c["texts"]), "texts,", sum(t["valid"] for t in c["texts"]), "valid")


if __name__ == "__main__":
    main()
