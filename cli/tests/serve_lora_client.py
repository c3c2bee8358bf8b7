"""Drives `lowbit serve --lora story=DIR` with the official `openai` client and raw HTTP.

Run by cli/tests/serve.rs as `python serve_lora_client.py URL EXPECTED_JSON`: EXPECTED_JSON holds
a prompt and what `lowbit run` answered for it greedily without the adapter ("base") and with it
("tuned"). Every check raises AssertionError with what differed.
"""

import concurrent.futures
import http.client
import json
import sys
import urllib.parse

from openai import OpenAI

url, expected_path = sys.argv[1:3]
expected = json.load(open(expected_path))
client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def chat(model, **extra):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": expected["prompt"]}],
        temperature=0,
        max_tokens=expected["max_tokens"],
        extra_body=extra or None,
    )
    return r.choices[0].message.content


def raw_chat(body):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    return r.status, json.loads(text)


base, tuned = expected["base"], expected["tuned"]

# The adapter is listed as a model beside the base.
ids = [m.id for m in client.models.list().data]
assert ids[0] == "smollm2" and "story" in ids, ids

# Picked by model name, by `lora` (a name, or llama-server's list), or not at all.
got = chat("story")
assert got == tuned, f"model=story: {got!r} != {tuned!r}"
got = chat("smollm2")
assert got == base, f"model=smollm2: {got!r} != {base!r}"
got = chat("smollm2", lora="story")
assert got == tuned, f"lora=story: {got!r}"
got = chat("smollm2", lora=[{"id": 0, "scale": 1.0}])
assert got == tuned, f"lora=[id 0]: {got!r}"
got = chat("story", lora=[{"id": 0, "scale": 0.0}])
assert got == base, f"lora scale 0 turns it off: {got!r}"

# Side by side in one batch: each gets its own answer.
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futures = [pool.submit(chat, m) for m in ["story", "smollm2", "story", "smollm2"]]
    answers = [f.result() for f in futures]
assert answers == [tuned, base, tuned, base], answers

# Bad picks are 400s with a message, and the server goes on serving.
for body, word in [
    ({"lora": "nope"}, "no adapter is named"),
    ({"lora": [{"id": 5}]}, "id below 1"),
    ({"lora": [{"id": 0}, {"id": 0, "scale": 0.5}]}, "one adapter per request"),
    ({"lora": 3}, "lora must be"),
]:
    body.update({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    status, reply = raw_chat(body)
    assert status == 400 and word in reply["error"]["message"], (body, status, reply)
assert chat("story") == tuned

print("all checks passed")
