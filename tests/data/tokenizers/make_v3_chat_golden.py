#!/usr/bin/env python3
"""Writes v3_chat_golden.json: Mistral's own encoding (mistral-common, the reference tokenizer of its
v3 Instruct models) of a few conversations with mistral-v3.model, beside the text Hugging Face's
v3 chat template renders for them ("<s>[INST] " + user + "[/INST]", " " + assistant + "</s>", the
system prompt before the last user message). tests/tokenizer_test.cc encodes that text with
EncodeWithSpecialTokens as a non-legacy tokenizer and must get mistral-common's ids.

    pip install mistral_common sentencepiece; python3 tests/data/tokenizers/make_v3_chat_golden.py
"""
import json
import os
import shutil
import tempfile

import mistral_common
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
CONVERSATIONS = [
    [("user", "Hi there")],
    [("user", "Hi there"), ("assistant", "Hello!"), ("user", "How are you?")],
    [("system", "You are terse."), ("user", "Summarise: « naïve café » – 日本語 🙂\nTwo lines.")],
    [("user", "What is 2 + 2?"), ("assistant", "4."), ("user", "And  with two spaces?")],
]


def template_text(conversation):
    """What the Hugging Face v3 template writes (its system prompt goes before the last user turn)."""
    system = next((c for r, c in conversation if r == "system"), None)
    turns = [(r, c) for r, c in conversation if r != "system"]
    text = "<s>"
    for i, (role, content) in enumerate(turns):
        if role == "user":
            if system is not None and i == len(turns) - 1:
                content = system + "\n\n" + content
            text += "[INST] " + content + "[/INST]"
        else:
            text += " " + content + "</s>"
    return text


def main():
    folder = tempfile.mkdtemp()
    try:
        # mistral-common tells the versions apart by the file's suffix.
        path = os.path.join(folder, "tokenizer.model.v3")
        shutil.copy(os.path.join(HERE, "mistral-v3.model"), path)
        tok = MistralTokenizer.from_file(path)
        cases = []
        for conversation in CONVERSATIONS:
            kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
            request = ChatCompletionRequest(messages=[kinds[r](content=c) for r, c in conversation])
            cases.append({"conversation": conversation, "text": template_text(conversation),
                          "ids": tok.encode_chat_completion(request).tokens})
    finally:
        shutil.rmtree(folder)
    with open(os.path.join(HERE, "v3_chat_golden.json"), "w") as f:
        json.dump({"generator": "make_v3_chat_golden.py, mistral_common " + mistral_common.__version__,
                   "cases": cases}, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
