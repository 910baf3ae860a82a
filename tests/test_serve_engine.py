"""The serving engine without HTTP: the slot KV cache, continuous batching equal to generating each request alone
(groundup.generate is the oracle), adapters and soft prompts sharing one batch, stop strings, cancellation,
timeouts, a full queue, and a failing batch that leaves the engine running."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from serve_helpers import chat_tokenizer, perturbed, tiny_decoder

from groundup import peft as P
from groundup.generate import GenerationConfig, generate_text
from groundup.serve.engine import Engine, EngineConfig, QueueFullError
from groundup.serve.requests import Event, GenerationRequest
from groundup.serve.slots import SlotCache

PROMPTS = ["ROMEO: ", "Hello there, my lord of the", "A", "To be or not", "KING HENRY: Now", "x y z w"]



@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


class Collect:
    """The emit callback of one request: its text pieces and its last event."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.final: Event | None = None
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.pieces.append(event.text)
        if event.finish_reason or event.error:
            self.final = event
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def run(engine: Engine, requests: list[GenerationRequest]) -> None:
    """Submit everything, then start the engine (so all requests are admitted together), wait, stop."""
    for r in requests:
        engine.submit(r)
    engine.start()
    for r in requests:
        assert r.emit.done.wait(60), "a request never finished"
    engine.stop()


def sampling(i: int, tok, **kw) -> GenerationConfig:
    return GenerationConfig(**{"max_new_tokens": 12 + 3 * i, "temperature": 0.9 if i % 2 else 0.0, "seed": i,
                               "top_p": 0.8 if i == 3 else None, "eos_id": tok.eos_id, **kw})


# --- the slot cache --------------------------------------------------------------------------------------------
def test_slot_cache_compaction_keeps_each_rows_tokens_in_order() -> None:
    cache = SlotCache(n_layer=1, slots=3, n_kv_head=1, columns=12, head_dim=1)
    assert cache.add_rows([2]) == (0, 0)  # row 0 holds columns 0..1
    assert cache.add_rows([5, 3]) == (1, 0)  # a batch of two, left-padded: both prompts end at the clock
    # the clock jumped to the longest prompt, leaving the first row a masked gap (columns 2..4)
    assert cache.clock == 5
    assert cache.mask[0, :5].tolist() == [1, 1, 0, 0, 0] and cache.mask[2, :5].tolist() == [0, 0, 1, 1, 1]
    for _ in range(4):  # four decode steps; then each row's column holds a value that names (row, token index)
        mask = cache.step_mask()
        assert mask.shape == (3, cache.clock + 1)
        cache.advance()
    for row in range(3):
        cols = torch.nonzero(cache.mask[row]).flatten()
        cache.k[0][row, 0, cols, 0] = torch.arange(len(cols), dtype=torch.float32) + 100 * row
    expected = [cache.k[0][r, 0, torch.nonzero(cache.mask[r]).flatten(), 0].clone() for r in range(3)]
    cache.remove(0)  # the last row moves into row 0
    expected = [expected[2], expected[1]]
    cache.compact()
    assert cache.clock == 9  # the longest row (5 + 4 tokens) now ends where the clock is
    for r in range(2):
        cols = torch.nonzero(cache.mask[r]).flatten()
        assert cols[-1] == cache.clock - 1 and torch.equal(cols, torch.arange(cache.clock - len(cols), cache.clock))
        assert torch.equal(cache.k[0][r, 0, cols, 0], expected[r])


def test_slot_cache_refuses_a_prompt_longer_than_its_columns() -> None:
    cache = SlotCache(n_layer=1, slots=2, n_kv_head=1, columns=8, head_dim=1)
    with pytest.raises(ValueError, match="does not fit a cache of 8 columns"):
        cache.add_rows([3, 8])


# --- continuous batching == generating alone ------------------------------------------------------------------
def test_batched_requests_equal_generating_each_alone(tok) -> None:
    model = tiny_decoder(tok.vocab_size)
    # 3 slots for 6 requests: later ones join while others decode; 100 columns force compactions
    engine = Engine(model, tok, EngineConfig(max_batch=3, cache_columns=100, max_prefill_tokens=8))
    reqs = [GenerationRequest(tok.encode(p), sampling(i, tok), Collect()) for i, p in enumerate(PROMPTS)]
    run(engine, reqs)
    for i, (prompt, req) in enumerate(zip(PROMPTS, reqs, strict=True)):
        assert req.emit.text == generate_text(model, tok, prompt, sampling(i, tok)), f"request {i}"
        assert req.emit.final.finish_reason in ("length", "stop")
        assert req.emit.final.prompt_tokens == len(tok.encode(prompt))
    hist = engine.metrics.histograms["groundup_batch_size"]
    assert hist.counts[hist.buckets.index(2)] < hist.n  # some steps ran 3 rows at once


def test_adapters_and_soft_prompts_share_one_batch(tok) -> None:
    base = tiny_decoder(tok.vocab_size)
    lora = P.inject(copy.deepcopy(base), P.LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), "a")
    lora = P.inject(lora, P.LoraConfig(r=2, alpha=4, target_modules=["v_proj", "down_proj"]), "b")
    for name, seed in (("a", 1), ("b", 2)):
        P.set_adapter(lora, name)
        perturbed(lora, seed)
    prompted = perturbed(P.inject(copy.deepcopy(base), P.PromptTuningConfig(n_virtual_tokens=3), "soft"), 3)
    soft = prompted.prompts["soft"].weight.detach().clone()
    rows = [("a", None), (None, None), ("b", None), (None, soft), ("a", None), ("b", soft)]
    engine = Engine(lora, tok, EngineConfig(max_batch=8))
    reqs = [GenerationRequest(tok.encode(PROMPTS[i]), sampling(i, tok), Collect(), adapter, prompt)
            for i, (adapter, prompt) in enumerate(rows)]
    run(engine, reqs)

    def alone(i: int, adapter: str | None, prompt: torch.Tensor | None) -> str:
        if prompt is not None:  # a soft prompt (the last row also with LoRA b: PromptModel over the LoRA model)
            model = copy.deepcopy(prompted if adapter is None else P.PromptModel(lora))
            if adapter is not None:
                model.prompts["soft"] = P.PromptEmbedding(prompt.clone())
                model.active = "soft"
                P.set_adapter(model.base_model, adapter)
            return generate_text(model, tok, PROMPTS[i], sampling(i, tok))
        if adapter is None:
            with P.disable(lora):
                return generate_text(lora, tok, PROMPTS[i], sampling(i, tok))
        P.set_adapter(lora, adapter)
        return generate_text(lora, tok, PROMPTS[i], sampling(i, tok))

    for i, (adapter, prompt) in enumerate(rows):
        assert reqs[i].emit.text == alone(i, adapter, prompt), f"row {i} ({adapter}, prompt={prompt is not None})"
    assert engine.metrics.histograms["groundup_batch_size"].total >= 6  # the first step held all six rows
    texts = [r.emit.text for r in reqs]
    # the adapters do change the (greedy) outputs, so the equalities above are not trivially true
    assert texts[0] != alone(0, None, None) and texts[2] != alone(2, None, None) and texts[0] != alone(0, "b", None)


def test_stop_strings_cut_the_text_like_generate_text(tok) -> None:
    model = tiny_decoder(tok.vocab_size)
    free = generate_text(model, tok, "ROMEO: ", GenerationConfig(max_new_tokens=30, temperature=0))
    stop = free[5:8]  # a piece the greedy output really contains
    cfg = GenerationConfig(max_new_tokens=30, temperature=0, stop=(stop,), eos_id=tok.eos_id)
    req = GenerationRequest(tok.encode("ROMEO: "), cfg, Collect())
    run(Engine(model, tok), [req])
    assert req.emit.text == generate_text(model, tok, "ROMEO: ", cfg) == free[: free.index(stop)]
    assert req.emit.final.finish_reason == "stop"


# --- cancellation, timeouts, a full queue, a failing batch ----------------------------------------------------
def test_cancelled_and_timed_out_requests_free_their_slots(tok) -> None:
    model = tiny_decoder(tok.vocab_size)
    engine = Engine(model, tok, EngineConfig(max_batch=2))
    cancelled = GenerationRequest(tok.encode("A"), GenerationConfig(max_new_tokens=80, temperature=0), Collect())
    cancelled.cancelled.set()  # the client left before it was admitted
    late = GenerationRequest(tok.encode("B"), GenerationConfig(max_new_tokens=80, temperature=0), Collect(),
                             deadline=0.0)  # already past its deadline
    ok = GenerationRequest(tok.encode("C"), GenerationConfig(max_new_tokens=5, temperature=0), Collect())
    for r in (cancelled, late, ok):
        engine.submit(r)
    engine.start()
    assert ok.emit.done.wait(30) and late.emit.done.wait(30)
    engine.stop()
    assert ok.emit.final.completion_tokens == 5
    assert late.emit.final.error_type == "timeout" and "timed out while queued" in late.emit.final.error
    assert cancelled.emit.final is None and not engine.rows and engine.cache.n == 0


def test_a_full_queue_refuses_more_requests(tok) -> None:
    engine = Engine(tiny_decoder(tok.vocab_size), tok, EngineConfig(max_queue=2))  # not started: nothing drains
    for _ in range(2):
        engine.submit(GenerationRequest([1], GenerationConfig(max_new_tokens=1), Collect()))
    with pytest.raises(QueueFullError, match="2 requests are already waiting"):
        engine.submit(GenerationRequest([1], GenerationConfig(max_new_tokens=1), Collect()))


def test_a_failing_batch_fails_its_requests_and_the_engine_goes_on(tok) -> None:
    model = P.inject(tiny_decoder(tok.vocab_size), P.LoraConfig(r=2, target_modules=["q_proj"]), "a")
    engine = Engine(model, tok)
    bad = GenerationRequest(tok.encode("A"), GenerationConfig(max_new_tokens=3), Collect(), adapter="missing")
    good = GenerationRequest(tok.encode("A"), GenerationConfig(max_new_tokens=3, temperature=0), Collect())
    engine.submit(bad)
    engine.start()
    assert bad.emit.done.wait(30)
    assert "missing" in bad.emit.final.error and engine.cache.n == 0
    engine.submit(good)  # the same engine serves on
    assert good.emit.done.wait(30)
    engine.stop()
    assert good.emit.final.finish_reason == "length" and good.emit.final.completion_tokens == 3
