"""Drives a running `lowbit serve` with the official `openai` client and with raw HTTP.

Run by cli/tests/serve.rs as `python serve_client.py MAIN_URL BUSY_URL EXPECTED_JSON`:
MAIN_URL is a server started with --api-key secret --parallel 4 --ctx 512 --max-body-kib 64 on
SmolLM2 nf4, BUSY_URL one with --parallel 1 --queue 1 and no key, EXPECTED_JSON holds what
`lowbit run` printed for a prompt. Every check raises AssertionError with what differed.
"""

import concurrent.futures
import http.client
import json
import sys
import time
import urllib.parse

import openai
from openai import OpenAI

main_url, busy_url, expected_path = sys.argv[1:4]
expected = json.load(open(expected_path))
KEY = "secret"
client = OpenAI(base_url=main_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def chat(content, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 24)
    return client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": content}], **kw)


def raw(url, method, path, body=None, headers=None, key=KEY):
    """One request over http.client; returns (status, headers, parsed JSON or text)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    h.update(headers or {})
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed


def still_serves():
    r = chat("Say hi.", max_tokens=4)
    assert r.choices[0].message.content, "a normal request after a bad one gets an answer"


def metric(name):
    _, _, text = raw(main_url, "GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


# 1. A greedy chat answer is what `lowbit run` prints for the same prompt.
r = chat(expected["prompt"], max_tokens=expected["max_tokens"])
assert r.choices[0].message.content == expected["text"], (r.choices[0].message.content, expected["text"])
assert r.usage.completion_tokens <= expected["max_tokens"] and r.usage.prompt_tokens > 0
assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
whole = r.choices[0].message.content

# 2. Streaming gives the same text, a role first, a finish reason last, then usage.
chunks = list(chat(expected["prompt"], max_tokens=expected["max_tokens"], stream=True, stream_options={"include_usage": True}))
assert chunks[0].choices[0].delta.role == "assistant"
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == whole, (streamed, whole)
assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens

# 3. Eight concurrent greedy requests each get exactly their alone-run answer.
prompts = [f"Write one sentence about the number {i}." for i in range(8)]
alone = [chat(p, max_tokens=20).choices[0].message.content for p in prompts]
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    together = list(pool.map(lambda p: chat(p, max_tokens=20).choices[0].message.content, prompts))
assert together == alone, list(zip(together, alone))

# 4. A stop string ends the text before it, with finish_reason "stop".
words = whole.split(" ")
assert len(words) > 4, whole
stop = " " + words[3]
r = chat(expected["prompt"], max_tokens=expected["max_tokens"], stop=[stop, "never appears"])
assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == whole[: whole.index(stop)], r

# 5. n completions with a seed: reproducible, and each equals its own seeded single run.
a = chat("Tell me a short story.", temperature=1.0, n=3, seed=11, max_tokens=12)
b = chat("Tell me a short story.", temperature=1.0, n=3, seed=11, max_tokens=12)
assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
assert [c.index for c in a.choices] == [0, 1, 2]
assert len({c.message.content for c in a.choices}) > 1, "different seeds, different stories"
one = chat("Tell me a short story.", temperature=1.0, seed=12, max_tokens=12)
assert one.choices[0].message.content == a.choices[1].message.content

# 6. Chat logprobs: the greedy token is the most likely one.
r = chat("Name a colour.", max_tokens=5, logprobs=True, top_logprobs=3)
for item in r.choices[0].logprobs.content:
    assert len(item.top_logprobs) == 3 and item.logprob == item.top_logprobs[0].logprob <= 0

# 7. Scoring a text: echo + logprobs + max_tokens 0 on /v1/completions.
text = "The quick brown fox jumps over the lazy dog."
s = client.completions.create(model="smollm2", prompt=text, max_tokens=0, echo=True, logprobs=2)
lp = s.choices[0].logprobs
assert s.choices[0].text == text and lp.token_logprobs[0] is None
assert len(lp.tokens) == len(lp.token_logprobs) == s.usage.prompt_tokens and s.usage.completion_tokens == 0
assert all(x <= 0 for x in lp.token_logprobs[1:]) and "".join(lp.tokens) == text
plain = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=8, temperature=0)
assert plain.object == "text_completion" and plain.choices[0].text

# 8. The small routes.
assert raw(main_url, "GET", "/health", key=None)[:3:2] == (200, {"status": "ok"})
assert [m.id for m in client.models.list().data] == ["smollm2"]
st, _, tok = raw(main_url, "POST", "/tokenize", {"content": "hello world"})
st2, _, detok = raw(main_url, "POST", "/detokenize", {"tokens": tok["tokens"]})
assert st == st2 == 200 and detok["content"] == "hello world"

# 9. Bad requests: an OpenAI-style error, and the server goes on serving.
msgs = [{"role": "user", "content": "hi"}]
bad = [
    (b"{not json", 400),
    (b"[1, 2]", 400),
    ({"messages": msgs, "temperature": -0.5}, 400),
    ({"messages": msgs, "temperature": "hot"}, 400),
    ({"messages": msgs, "top_p": 1.5}, 400),
    ({"messages": msgs, "max_tokens": -1}, 400),
    ({"messages": msgs, "n": 5}, 400),
    ({"messages": msgs, "stop": 3}, 400),
    ({"messages": "hi"}, 400),
    ({"messages": []}, 400),
    ({}, 400),
    ({"messages": [{"role": "user", "content": "word " * 2000}]}, 400),
    ({"messages": msgs, "padding": "x" * 70000}, 413),
]
for body, status in bad:
    st, _, err = raw(main_url, "POST", "/v1/chat/completions", body)
    assert st == status and err["error"]["message"] and err["error"]["type"], (body if len(str(body)) < 200 else "...", st, err)
    still_serves()
for method, path, status in [("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405)]:
    st, _, err = raw(main_url, method, path)
    assert st == status and "error" in err, (path, st, err)
    still_serves()
# The openai client turns them into its typed errors.
try:
    chat("hi", temperature=5)
    raise AssertionError("temperature 5 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400
for key in (None, "wrong"):
    st, _, err = raw(main_url, "POST", "/v1/chat/completions", {"messages": msgs}, key=key)
    assert st == 401 and err["error"]["type"] == "authentication_error", (key, st, err)
try:
    OpenAI(base_url=main_url + "/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass
still_serves()

# 10. A client that goes away mid-stream cancels its sequence and frees the slot.
cancelled = metric("lowbit_requests_cancelled_total")
u = urllib.parse.urlparse(main_url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
body = {"messages": [{"role": "user", "content": "Count from 1 to 1000."}], "max_tokens": 400, "stream": True}
conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Authorization": "Bearer " + KEY, "Content-Type": "application/json"})
resp = conn.getresponse()
assert resp.status == 200
resp.fp.readline()
conn.sock.close()
conn.close()
deadline = time.time() + 20
while time.time() < deadline and (metric("lowbit_active_slots") > 0 or metric("lowbit_requests_cancelled_total") <= cancelled):
    time.sleep(0.1)
assert metric("lowbit_active_slots") == 0 and metric("lowbit_requests_cancelled_total") > cancelled
still_serves()

# 11. A full queue: 503 with Retry-After (one slot, a queue of one).
busy = OpenAI(base_url=busy_url + "/v1", api_key="none", max_retries=0, timeout=120)
long = {"model": "m", "messages": [{"role": "user", "content": "Count from 1 to 1000."}], "max_tokens": 300}


def post_busy(_):
    return raw(busy_url, "POST", "/v1/chat/completions", long, key=None)


with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(post_busy, range(4)))
codes = sorted(st for st, _, _ in results)
assert 200 in codes and 503 in codes, codes
assert all(h.get("retry-after") == "1" for st, h, _ in results if st == 503)
assert busy.chat.completions.create(model="m", messages=msgs, max_tokens=2).choices[0].message is not None

print("serve_client: all checks passed")
