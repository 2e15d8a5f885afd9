"""The official `openai` Python client against `tessera serve` (driven by tests/serve.rs).

Usage: openai_client.py BASE_URL MODEL API_KEY

Every check raises on failure; the last line printed is a JSON report that the Rust test
compares with `tessera generate`'s output.
"""

import json
import sys

import openai
from openai import OpenAI

base_url, model, key = sys.argv[1:4]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)

# Completion, greedy.
done = client.completions.create(model=model, prompt="def add(a, b):", max_tokens=16, temperature=0)
assert done.object == "text_completion", done
choice = done.choices[0]
assert choice.finish_reason in ("length", "stop"), choice
assert done.usage.completion_tokens >= 1 and done.usage.prompt_tokens >= 1, done.usage
completion_text = choice.text

# The same request streamed gives the same text.
streamed = "".join(
    c.choices[0].text
    for c in client.completions.create(
        model=model, prompt="def add(a, b):", max_tokens=16, temperature=0, stream=True
    )
    if c.choices
)
assert streamed == completion_text, (streamed, completion_text)

# n choices with logprobs; seeded sampling repeats.
many = client.completions.create(
    model=model, prompt=["hello", "import os"], max_tokens=4, n=2, logprobs=2, temperature=0
)
assert [c.index for c in many.choices] == [0, 1, 2, 3], many
assert len(many.choices[0].logprobs.tokens) == len(many.choices[0].logprobs.token_logprobs)
a, b = (
    client.completions.create(model=model, prompt="hello", max_tokens=8, temperature=1.0, seed=7)
    for _ in range(2)
)
assert a.choices[0].text == b.choices[0].text, (a, b)

# Chat, whole and streamed.
messages = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "hello"},
]
chat = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
assert chat.choices[0].message.role == "assistant", chat
chat_text = chat.choices[0].message.content
chunks = list(
    client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1, chunks[-1]
assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat_text

# The model field picks what is served; anything else is a 404.
assert [m.id for m in client.models.list()] == [model]
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    raise AssertionError("an unknown model must fail")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body

# Bad input: typed errors from OpenAI-style bodies.
try:
    client.completions.create(model=model, prompt="hello", max_tokens=100000)
    raise AssertionError("max_tokens past the context must fail")
except openai.BadRequestError as e:
    assert e.body["code"] == "context_length_exceeded", e.body
try:
    client.completions.create(model=model, prompt="hello", max_tokens=2, extra_body={"top_k": 3})
    raise AssertionError("an unknown field must fail")
except openai.BadRequestError as e:
    assert e.body["param"] == "top_k", e.body

# A wrong key is refused.
try:
    OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key must fail")
except openai.AuthenticationError:
    pass

print(json.dumps({"completion_text": completion_text, "chat_text": chat_text}))
