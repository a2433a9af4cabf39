"""Writes the fuzz targets' seed inputs (corpus/<target>/seed-*) from the project's own test data
and a few hand-written cases. Campaigns (scripts/fuzz.sh) add what they find beside them.

    python3 tests/fuzz/make_seeds.py [--build build]

The gRPC seeds need the generated Python modules (<build>/python, CMake target moe_proto_python)
and python3-protobuf. Each target's first input byte picks what the rest is (see its source).
"""
import argparse
import glob
import hashlib
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")


def write(target, payload):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(payload).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(payload)


def response_format():
    t = "fuzz_response_format"
    for case in json.load(open(os.path.join(DATA, "json_schema", "schema_golden.json")))["cases"]:
        write(t, b"\x00" + json.dumps(case["schema"]).encode())
        write(t, b"\x04" + json.dumps(case["schema"]).encode())  # compact
    for case in json.load(open(os.path.join(DATA, "json_schema", "pydantic_golden.json")))["cases"][:8]:
        write(t, b"\x00" + json.dumps(case["schema"]).encode())
    for case in json.load(open(os.path.join(DATA, "regex", "regex_golden.json")))["cases"]:
        write(t, b"\x01" + case["pattern"].encode())
    for g in ['root ::= ("ab" | "c")* "d"?', 'root ::= [a-c]{2,4} ("-" [0-9]+)?',
              'root ::= x (" " x)*\nx ::= "yes" | "no" | [0-9]{1,3}  # a comment\n', 'root ::= [^abc]+ "."',
              'root ::= object\nobject ::= "{" ws (pair ("," ws pair)*)? "}"\npair ::= string ":" ws value\n'
              'value ::= object | string | [0-9]+ | "true" | "false" | "null"\nstring ::= "\\"" [^"\\\\]* "\\""\n'
              'ws ::= [ \\t\\n]*']:
        write(t, b"\x02" + g.encode())
    for choices in (["yes", "no"], ["é€ ok", "a"], ["x"]):
        write(t, b"\x03" + b"\x00".join(c.encode() for c in choices))


def http_requests():
    t = "fuzz_http_requests"
    msgs = [{"role": "user", "content": "ROMEO: speak"}]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    bodies = [
        (0, {"model": "m", "prompt": "ROMEO:", "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "stop": ["\n"],
             "logprobs": 2, "n": 2, "echo": True, "seed": 3}),
        (0, {"prompt": [[1, 2, 3], "a"], "max_tokens": None, "stream": True, "stream_options": {"include_usage": True},
             "guided_regex": "[a-z]+", "logit_bias": {"5": -100}, "use_beam_search": True, "best_of": 2, "n": 2}),
        (0, {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
             "type": "object", "properties": {"a": {"type": "integer"}}}}}, "prompt_logprobs": 1}),
        (1, {"model": "m", "messages": msgs, "max_tokens": 4, "logprobs": True, "top_logprobs": 2}),
        (1, {"messages": msgs + [{"role": "assistant", "content": None, "tool_calls": [{"id": "abcdefghi",
             "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}],
             "tools": tools, "tool_choice": "required", "parallel_tool_calls": False}),
        (1, {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                          {"role": "assistant", "content": "he"}], "continue_final_message": True,
             "add_generation_prompt": False, "echo": True, "tool_choice": {"type": "function", "function": {"name": "weather"}},
             "tools": tools, "guided_grammar": "root ::= \"x\"", "chat_template_kwargs": {"a": 1}}),
        (2, {"model": "m", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 8, "store": False}),
        (2, {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                       {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
                       {"type": "function_call_output", "call_id": "c1", "output": "sunny"}],
             "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}], "tool_choice": "auto",
             "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "string"}}}, "stream": True}),
        (3, {"inputs": "ROMEO:", "parameters": {"max_new_tokens": 8, "do_sample": True, "temperature": 0.5,
             "top_k": 5, "stop": ["\n"], "details": True, "decoder_input_details": True, "seed": 1,
             "grammar": {"type": "json", "value": {"type": "object"}}}}),
        (4, {"inputs": "x", "parameters": {"return_full_text": True, "best_of": 2, "do_sample": True,
             "repetition_penalty": 1.2, "truncate": 4, "watermark": False, "typical_p": 0.9}}),
        (5, {"inputs": "ROMEO: speak, good nurse"}),
        (6, {"inputs": "x", "stream": True, "parameters": {"grammar": {"type": "regex", "value": "[0-9]+"}}}),
    ]
    for route, body in bodies:
        write(t, bytes([route]) + json.dumps(body).encode())
    write(t, b"\x01" + b'{"messages": [' * 40)  # truncated nesting


def grpc_requests(build):
    sys.path.insert(0, os.path.join(build, "python"))
    from google.protobuf import json_format
    from moe.v1 import inference_pb2 as pb
    t = "fuzz_grpc_requests"
    generate = [
        {"prompt": {"text": "ROMEO:"}, "sampling": {"maxTokens": 8, "temperature": 0.7, "topP": 0.9, "stop": ["\n"],
                                                   "logprobs": 2, "n": 2, "seed": "3"}},
        {"prompt": {"tokenIds": {"ids": [1, 5, 9]}}, "sampling": {"responseFormat": {"type": "TYPE_JSON_SCHEMA",
         "jsonSchema": "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}}}"},
         "stopTokenIds": [2], "badWords": ["king"], "allowedTokenIds": [3, 4, 5], "truncatePromptTokens": 2}},
        {"prompt": {"text": "<s>[INST] hi", "parseSpecialTokens": True}, "sampling": {"responseFormat": {
         "type": "TYPE_GRAMMAR", "grammar": "root ::= [a-z]+"}, "minTokens": 2, "promptLogprobs": 1},
         "priority": 1, "returnPromptTokenIds": True, "cacheSalt": "s"},
        {"prompt": {"text": "x"}, "sampling": {"responseFormat": {"type": "TYPE_REGEX", "regex": "(ab|c)+"},
         "repetitionPenalty": 1.1, "presencePenalty": 0.5, "frequencyPenalty": -0.5, "minP": 0.1}},
        {"prompt": {"text": "x"}, "sampling": {"responseFormat": {"type": "TYPE_CHOICE", "choices": ["yes", "no"]}}},
    ]
    for g in generate:
        write(t, b"\x00" + json_format.ParseDict(g, pb.GenerateRequest()).SerializeToString())
    score = {"items": [{"context": {"text": "ROMEO:"}, "continuation": {"text": " speak"}},
                       {"context": {"tokenIds": {"ids": [1, 2]}}, "continuation": {"tokenIds": {"ids": [3]}}}]}
    write(t, b"\x01" + json_format.ParseDict(score, pb.ScoreRequest()).SerializeToString())
    rolling = {"texts": [{"text": "ROMEO: " * 60}, {"tokenIds": {"ids": [1, 2, 3]}}], "topLogprobs": 2}
    write(t, b"\x02" + json_format.ParseDict(rolling, pb.ScoreRollingRequest()).SerializeToString())


def tokenizer():
    t = "fuzz_tokenizer"
    texts = ["ROMEO: speak, good nurse", "über 日本語 é€ \U0001F600", "  two  spaces\n\tand tabs", "<s>[INST] Hi [/INST]</s>",
             "<unk><0x0A>▁x", "def f():\n    return 1\n"]
    for text in texts:
        for first in (0, 1, 2, 3, 12, 13):  # bit 0 the tokenizer; (b >> 1) % 3: encode, with special tokens; bit 3 offsets
            write(t, bytes([first]) + text.encode())
    for ids in ([1, 100, 200, 3, 13, 2], list(range(0, 300, 7)), [0, 1, 2, 3, 4, 5, 6, 258, 259]):
        for first in (4, 5, 10, 11):  # decode ((b >> 1) % 3 == 2), bit 3 skipping special tokens
            write(t, bytes([first]) + b"".join(struct.pack("<I", i) for i in ids))


def chat_templates():
    for path in sorted(glob.glob(os.path.join(DATA, "chat_templates", "*.jinja"))):
        write("fuzz_chat_template", open(path, "rb").read())


def model_files():
    t = "fuzz_model_files"
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    write(t, b"\x00" + struct.pack("<Q", len(h)) + h + bytes(range(20)))
    for path in sorted(glob.glob(os.path.join(DATA, "golden", "*", "config.json"))) + \
            [os.path.join(ROOT, "models", "shakespeare-moe", "config.json")]:
        write(t, b"\x01" + open(path, "rb").read())
    for gen in ({"bos_token_id": 1, "eos_token_id": [2, 32000], "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64},
                {"do_sample": False, "repetition_penalty": 1.1, "top_k": 20, "min_p": 0.05}):
        write(t, b"\x02" + json.dumps(gen).encode())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    args = ap.parse_args()
    response_format()
    http_requests()
    grpc_requests(args.build)
    tokenizer()
    chat_templates()
    model_files()


if __name__ == "__main__":
    main()
