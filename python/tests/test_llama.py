"""The lowbit wheel, installed in a fresh venv, against the `lowbit` command line on SmolLM2.

Environment (scripts/test-python.sh sets it): LOWBIT_TEST_MODEL (SmolLM2 nf4 lowbit file),
LOWBIT_TEST_GGUF (the SmolLM2 GGUF), LOWBIT_BIN (the lowbit binary).
"""

import _thread
import json
import math
import os
import shutil
import subprocess
import threading
import time

import pytest

import lowbit

MODEL = os.environ["LOWBIT_TEST_MODEL"]
GGUF = os.environ["LOWBIT_TEST_GGUF"]
BIN = os.environ["LOWBIT_BIN"]
TINY_HF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "runtime", "tests", "data", "tiny", "h96")
PROMPT = "The three primary colors are"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def llm():
    with lowbit.Llama(model_path=MODEL, n_ctx=1024, n_threads=2, verbose=False) as m:
        yield m


def cli(*args):
    out = subprocess.run([BIN, *args], check=True, capture_output=True, text=True)
    return out.stdout


def test_greedy_completion_equals_lowbit_run(llm):
    r = llm.create_completion(PROMPT, max_tokens=24, temperature=0)
    want = cli("run", "-m", MODEL, "-p", PROMPT, "--raw", "-n", "24", "--temp", "0")
    assert r["choices"][0]["text"] == want.rstrip("\n")
    assert r["object"] == "text_completion"
    assert r["usage"]["completion_tokens"] <= 24 and r["choices"][0]["finish_reason"] in ("stop", "length")
    assert llm(PROMPT, max_tokens=24, temperature=0)["choices"][0]["text"] == r["choices"][0]["text"]


def test_greedy_chat_equals_lowbit_run(llm):
    r = llm.create_chat_completion([{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0)
    want = cli("run", "-m", MODEL, "-p", QUESTION, "-n", "24", "--temp", "0")
    assert r["choices"][0]["message"] == {"role": "assistant", "content": want.rstrip("\n")}
    assert r["object"] == "chat.completion"


def test_stream_equals_whole(llm):
    whole = llm.create_completion(PROMPT, max_tokens=20, temperature=0)["choices"][0]["text"]
    chunks = list(llm.create_completion(PROMPT, max_tokens=20, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    msgs = [{"role": "user", "content": QUESTION}]
    whole = llm.create_chat_completion(msgs, max_tokens=20, temperature=0)["choices"][0]["message"]["content"]
    chunks = list(llm.create_chat_completion(msgs, max_tokens=20, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole


def test_tokenize_round_trip_and_sizes(llm):
    ids = llm.tokenize(b"hello world, this is lowbit")
    assert llm.detokenize(ids) == b"hello world, this is lowbit"
    assert llm.n_vocab() == 49152 and llm.n_ctx() == 1024
    assert llm.metadata["general.architecture"] == "llama"
    with pytest.raises(ValueError):
        llm.detokenize([10**9])


def test_threads_share_one_llama(llm):
    prompts = [f"Write one sentence about the number {i}." for i in range(4)]
    alone = [llm.create_completion(p, max_tokens=16, temperature=0)["choices"][0]["text"] for p in prompts]
    got = [None] * 4

    def run(i):
        got[i] = llm.create_completion(prompts[i], max_tokens=16, temperature=0)["choices"][0]["text"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone


@pytest.mark.parametrize("kv_type", ["f16", "q8"])
def test_smaller_kv_caches_generate(kv_type):
    with lowbit.Llama(model_path=MODEL, n_ctx=256, kv_type=kv_type) as m:
        r = m.create_completion(PROMPT, max_tokens=8, temperature=0)
    assert r["choices"][0]["text"]


def test_seeds_repeat(llm):
    a = llm.create_completion(PROMPT, max_tokens=12, temperature=1.0, seed=5)["choices"][0]["text"]
    b = llm.create_completion(PROMPT, max_tokens=12, temperature=1.0, seed=5)["choices"][0]["text"]
    assert a == b


def test_generate_batch_equals_one_by_one(llm):
    prompts = [PROMPT, "Once upon a time", [{"role": "user", "content": QUESTION}]]
    batch = llm.generate_batch(prompts, max_tokens=12, temperature=0)
    assert batch[0]["choices"][0]["text"] == llm.create_completion(PROMPT, max_tokens=12, temperature=0)["choices"][0]["text"]
    assert batch[1]["choices"][0]["text"] == llm.create_completion("Once upon a time", max_tokens=12, temperature=0)["choices"][0]["text"]
    chat = llm.create_chat_completion(prompts[2], max_tokens=12, temperature=0)
    assert batch[2]["choices"][0]["message"] == chat["choices"][0]["message"]
    n3 = llm.generate_batch([PROMPT], n=3, max_tokens=8, temperature=1.0, seed=3)
    assert len(n3[0]["choices"]) == 3


def test_score_equals_log_softmax_of_lowbit_logits(llm, tmp_path):
    prompt, completion = "The sky is", " blue and the grass is green."
    scores = llm.score([prompt], [completion])[0]
    p_ids, c_ids = llm.tokenize(prompt.encode()), llm.tokenize(completion.encode(), add_bos=False)
    assert len(scores) == len(c_ids)
    out = tmp_path / "logits.npy"
    cli("logits", "-m", MODEL, "--tokens", ",".join(map(str, p_ids + c_ids)), "--out", str(out))
    raw = out.read_bytes()
    header_len = int.from_bytes(raw[8:10], "little")
    values = memoryview(raw[10 + header_len :]).cast("f")
    vocab = llm.n_vocab()
    for k, tok in enumerate(c_ids):
        row = values[(len(p_ids) - 1 + k) * vocab : (len(p_ids) + k) * vocab]
        m = max(row)
        lse = m + math.log(sum(math.exp(x - m) for x in row))
        assert abs((row[tok] - lse) - scores[k]) < 1e-3, (k, row[tok] - lse, scores[k])


def test_llama_cpp_python_budgets_and_context(llm):
    # max_tokens=-1 and None: until an end token or a full context, as llama-cpp-python; n_ctx=0
    # takes the model's trained context.
    with lowbit.Llama(model_path=MODEL, n_ctx=48, n_threads=2) as small:
        for budget in (-1, None):
            r = small.create_completion(PROMPT, max_tokens=budget, temperature=0)
            u = r["usage"]
            assert u["completion_tokens"] > 16 or r["choices"][0]["finish_reason"] == "stop", r
            assert u["prompt_tokens"] + u["completion_tokens"] <= 49, r
    with lowbit.Llama(model_path=MODEL, n_ctx=0, n_threads=2) as whole:
        assert whole.n_ctx() == int(whole.metadata["config.max_position_embeddings"]) > 2048


def test_special_token_ids(llm):
    eos, bos = llm.token_eos(), llm.token_bos()
    assert 0 <= eos < llm.n_vocab() and -1 <= bos < llm.n_vocab()
    # The end token's text round-trips to its id.
    text = llm.detokenize([eos], special=True)
    assert text and llm.tokenize(text, add_bos=False, special=True) == [eos]
    assert llm.reset() is None


def test_echo_logprobs_score_the_prompt(llm):
    r = llm.create_completion("The quick brown fox", max_tokens=0, echo=True, logprobs=1)
    lp = r["choices"][0]["logprobs"]
    assert r["choices"][0]["text"] == "The quick brown fox"
    assert lp["token_logprobs"][0] is None and all(x <= 0 for x in lp["token_logprobs"][1:])


def test_a_tokenizer_that_panics_its_library_is_an_error(tmp_path, capfd):
    # A decoder that is not valid JSON makes the tokenizers library panic: an exception here,
    # with no panic message on stderr.
    src = tmp_path / "ckpt"
    shutil.copytree(TINY_HF, src)
    (src / "tokenizer.json").write_text(
        '{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,'
        '"pre_tokenizer":null,"post_processor":null,'
        '"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offset, "content"s":true},'
        '"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}'
    )
    out = tmp_path / "t.lowbit"
    cli("convert", str(src), "-o", str(out), "--quant", "int8", "-q")
    capfd.readouterr()
    with lowbit.Llama(model_path=str(out), n_threads=1) as m:
        with pytest.raises(lowbit.LowbitError, match="malformed"):
            m.tokenize(b"hi")
    assert "panicked" not in capfd.readouterr().err


def test_bad_arguments_raise(llm, tmp_path):
    with pytest.raises(FileNotFoundError):
        lowbit.Llama(model_path=str(tmp_path / "missing.lowbit"))
    bad = tmp_path / "bad.lowbit"
    bad.write_bytes(b"not a model" * 100)
    with pytest.raises(lowbit.LowbitError):
        lowbit.Llama(model_path=str(bad))
    with pytest.raises(ValueError):
        lowbit.Llama(model_path=MODEL, n_parallel=0)
    with pytest.raises(ValueError):
        lowbit.Llama(model_path=MODEL, kv_type="q3")
    with pytest.raises(ValueError):
        llm.create_completion(PROMPT, temperature=-1)
    with pytest.raises(ValueError):
        llm.create_completion(12)
    with pytest.raises(ValueError):
        llm.create_chat_completion([])
    with pytest.raises(ValueError):
        llm.create_chat_completion([{"content": "no role"}])
    with pytest.raises(ValueError):
        llm.create_completion("word " * 3000, max_tokens=4)
    with pytest.raises(ValueError):
        lowbit.convert(MODEL, str(tmp_path / "x.lowbit"), quant="q3")
    # Still works after all that.
    assert llm.create_completion(PROMPT, max_tokens=2, temperature=0)["choices"][0]["text"]


def test_ctrl_c_stops_a_generation(llm):
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    start = time.time()
    with pytest.raises(KeyboardInterrupt):
        llm.create_completion("Count from one to ten thousand: one, two, three,", max_tokens=None, temperature=0, stop=[])
        time.sleep(10)  # finished before the interrupt: it still lands, here
    assert time.time() - start < 8
    assert llm.create_completion(PROMPT, max_tokens=2, temperature=0)["choices"][0]["text"]


def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_close_frees_memory():
    m = lowbit.Llama(model_path=MODEL, n_ctx=512)
    m.create_completion(PROMPT, max_tokens=8, temperature=0)
    before = rss_mib()
    m.close()
    after = rss_mib()
    assert before - after > 40, (before, after)
    with pytest.raises(ValueError):
        m.create_completion(PROMPT)


def test_gguf_converts_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    with lowbit.Llama(model_path=GGUF, quant="int8", n_ctx=256) as m:
        text = m.create_completion(PROMPT, max_tokens=4, temperature=0)["choices"][0]["text"]
    cached = list((tmp_path / "converted").glob("*.lowbit"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    start = time.time()
    with lowbit.Llama(model_path=GGUF, quant="int8", n_ctx=256) as m:
        assert m.create_completion(PROMPT, max_tokens=4, temperature=0)["choices"][0]["text"] == text
    assert cached[0].stat().st_mtime_ns == stamp and time.time() - start < 5
    info = lowbit.inspect(str(cached[0]), n_ctx=256)
    assert info["architecture"] == "llama" and info["quantization"]["scheme"] == "int8"


def test_hf_folder_converts_once_and_again_when_it_changes(tmp_path, monkeypatch):
    # A tiny random Mistral saved by transformers (config.json + model.safetensors).
    src = tmp_path / "tiny"
    shutil.copytree(TINY_HF, src)
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    with lowbit.Llama(model_path=str(src), quant="q8", n_ctx=64) as m:
        vocab = m.n_vocab()
    converted = tmp_path / "cache" / "converted"
    cached = list(converted.glob("*.lowbit"))
    assert len(cached) == 1 and lowbit.inspect(str(cached[0]))["quantization"]["scheme"] == "q8"
    stamp = cached[0].stat().st_mtime_ns
    with lowbit.Llama(model_path=str(src), quant="q8", n_ctx=64) as m:
        assert m.n_vocab() == vocab
    assert [p.stat().st_mtime_ns for p in converted.glob("*.lowbit")] == [stamp], "a hit reuses the file"
    # Another scheme, and a changed source, are other entries.
    with lowbit.Llama(model_path=str(src), quant="nf4", n_ctx=64):
        pass
    with lowbit.Llama(model_path=str(src), quant="nf4-small", n_ctx=64):
        pass
    with lowbit.Llama(model_path=str(src), quant="q5-mix", n_ctx=64) as m:
        assert m.n_vocab() == vocab
    schemes = sorted(lowbit.inspect(str(p))["quantization"]["scheme"] for p in converted.glob("*.lowbit"))
    assert schemes == ["nf4", "nf4-small", "q5-mix", "q8"]
    config = json.loads((src / "config.json").read_text())
    config["rms_norm_eps"] = config.get("rms_norm_eps", 1e-6) * 2
    (src / "config.json").write_text(json.dumps(config))
    with lowbit.Llama(model_path=str(src), quant="q8", n_ctx=64):
        pass
    assert len(list(converted.glob("*.lowbit"))) == 5


def test_convert_reports_progress(tmp_path):
    seen = []
    lowbit.convert(GGUF, str(tmp_path / "m.lowbit"), quant="nf4", progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert lowbit.inspect(str(tmp_path / "m.lowbit"))["bits_per_weight"] < 6


def test_lora_path_equals_lowbit_run_with_the_adapter(llm, tmp_path):
    # A synthetic PEFT adapter with SmolLM2's shapes on every linear.
    adapter = str(tmp_path / "adapter")
    cli("synth", "--preset", "smollm2-135m", "--adapter-rank", "8", "-o", adapter)
    # At three times its trained strength, so the greedy texts part early on every ISA.
    want = cli("run", "-m", MODEL, "-p", PROMPT, "--raw", "-n", "24", "--temp", "0", "--lora", adapter + ":3")
    with lowbit.Llama(model_path=MODEL, n_ctx=256, n_threads=2, lora_path=adapter, lora_scale=3.0) as tuned:
        got = tuned.create_completion(PROMPT, max_tokens=24, temperature=0)["choices"][0]["text"]
    assert got == want.rstrip("\n")
    base = llm.create_completion(PROMPT, max_tokens=24, temperature=0)["choices"][0]["text"]
    assert got != base, "the adapter changes the greedy text"
    with lowbit.Llama(model_path=MODEL, n_ctx=256, n_threads=2, lora_path=adapter, lora_scale=0.0) as off:
        assert off.create_completion(PROMPT, max_tokens=24, temperature=0)["choices"][0]["text"] == base
    # The adapter converted on its own (lowbit.convert of the folder) gives the same text.
    adapter_file = str(tmp_path / "adapter.lowbit")
    lowbit.convert(adapter, adapter_file)
    assert lowbit.inspect(adapter_file)["architecture"] == "lora-adapter"
    with lowbit.Llama(model_path=MODEL, n_ctx=256, n_threads=2, lora_path=adapter_file, lora_scale=3.0) as f:
        assert f.create_completion(PROMPT, max_tokens=24, temperature=0)["choices"][0]["text"] == got
    with pytest.raises(FileNotFoundError):
        lowbit.Llama(model_path=MODEL, lora_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError):
        lowbit.Llama(model_path=MODEL, lora_path=adapter, lora_scale=float("nan"))
    # An adapter for another model is a clear error, not a crash.
    other = str(tmp_path / "other")
    os.makedirs(other)
    shutil.copy(os.path.join(adapter, "adapter_config.json"), other)
    with open(os.path.join(adapter, "adapter_model.safetensors"), "rb") as f:
        data = f.read()
    with open(os.path.join(other, "adapter_model.safetensors"), "wb") as f:
        f.write(data.replace(b"layers.29.", b"layers.99."))
    with pytest.raises(Exception, match="layers.99"):
        lowbit.Llama(model_path=MODEL, lora_path=other)
