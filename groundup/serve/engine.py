"""The serving engine: continuous batching (Yu et al. 2022, "Orca") on one thread that owns the model.

Requests join and leave the running batch at every decode step. Each loop iteration:

    admit:   take queued requests while slots are free (at most max_prefill_tokens of prompt per iteration,
             so joining never stalls the running rows for long); prefill them in one forward pass (left-padded,
             like generate.py's batched prompts) into new cache rows and sample their first tokens
    decode:  one forward pass for every running row (its own position, mask and adapter), sample each
             row with its own parameters and generator, emit text, free the rows that finished
    embed:   answer queued embedding requests (encoder model) between steps

A vision-language model's request brings its images' features; the engine turns them into visual tokens once, at
prefill, and every forward pass sees each row's own (rows without images see none), so requests with images and
text-only ones share a batch.

The web app talks to the engine only through `submit` (a bounded queue: QueueFullError when full) and the
`emit` callback of each request. A request's adapter is applied to its row alone (peft.adapter_rows), and a
soft prompt is prepended at prefill, so every request computes what it would compute served alone.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..embed import embed_texts
from ..generate import sample
from ..peft.api import adapter_rows
from ..peft.prompt import token_embedding_name
from .config import EngineConfig
from .metrics import Metrics
from .requests import EmbeddingRequest, Event, GenerationRequest, TextStream
from .slots import SlotCache

log = logging.getLogger("groundup.serve")


class QueueFullError(RuntimeError):
    """The request queue is full; the client should retry later (HTTP 429)."""


class EngineClosedError(RuntimeError):
    """The engine is shutting down and takes no new requests (HTTP 503)."""


@dataclass
class _Row:
    request: GenerationRequest
    stream: TextStream
    generator: torch.Generator | None
    last: int = 0  # the token the next decode step feeds
    position: int = 0  # its position
    generated: int = 0
    t_last: float = 0.0
    done: bool = False
    visual: torch.Tensor | None = None  # its images through the model's visual() (M, L, d), computed once


class Engine:
    def __init__(self, model: nn.Module | None, tokenizer, cfg: EngineConfig | None = None,
                 encoder: tuple[nn.Module, object] | None = None, metrics: Metrics | None = None) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg or EngineConfig()
        self.encoder = encoder  # (encoder model, its tokenizer) for /v1/embeddings
        self.metrics = metrics or Metrics()
        self.queue: queue.Queue[GenerationRequest] = queue.Queue(self.cfg.max_queue)
        self.embed_queue: queue.Queue[EmbeddingRequest] = queue.Queue(self.cfg.max_queue)
        self.rows: list[_Row] = []
        self.closing = threading.Event()
        self._held: GenerationRequest | None = None  # taken off the queue while idle, admitted next
        self._thread: threading.Thread | None = None
        self.cache: SlotCache | None = None
        self.max_seq_len = 0
        if model is not None:
            model.eval()
            mcfg = model.config
            self.max_seq_len = min(self.cfg.max_seq_len or 2048, mcfg.block_size)
            weight = next(model.parameters())
            self.device = weight.device
            if mcfg.mixer == "hyena":
                raise ValueError("the serving engine batches attention and retention models; a Hyena model's "
                                 "convolutions read positions, not the engine's shared columns: decode it with "
                                 "groundup generate")
            state = model.new_cache(self.cfg.max_batch) if mcfg.mixer == "retention" else None
            self.cache = SlotCache(mcfg.n_layer, self.cfg.max_batch, mcfg.n_kv_head,
                                   self.cfg.cache_columns or 2 * self.max_seq_len, mcfg.head_dim,
                                   model.embed.tok_emb.weight.dtype, weight.device, state)
            if self.cache.columns <= self.max_seq_len:
                raise ValueError(f"EngineConfig.cache_columns={self.cache.columns} must exceed max_seq_len="
                                 f"{self.max_seq_len} (room for one decode step past the longest request)")
            self.token_embedding = model.get_submodule(token_embedding_name(model))
            self.has_adapters = getattr(model, "peft_state", None) is not None
        self.metrics.gauges["groundup_queue_depth"] = self.queue_depth
        self.metrics.gauges["groundup_running_requests"] = lambda: len(self.rows)

    # --- the app's side -----------------------------------------------------------------------------------
    def queue_depth(self) -> int:
        return self.queue.qsize() + self.embed_queue.qsize() + (self._held is not None)

    def submit(self, request: GenerationRequest | EmbeddingRequest) -> None:
        if self.closing.is_set():
            raise EngineClosedError("the server is shutting down; send the request to another replica or retry")
        target = self.embed_queue if isinstance(request, EmbeddingRequest) else self.queue
        try:
            target.put_nowait(request)
        except queue.Full:
            raise QueueFullError(f"{self.cfg.max_queue} requests are already waiting; retry shortly") from None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="groundup-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Take no new requests, finish the running and queued ones (up to `timeout` seconds), then stop."""
        self.closing.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # past the grace period: end what is left
                for req in self._drain_all():
                    req.cancelled.set()
                self._thread.join(5.0)

    # --- the loop -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    self._embed_waiting()
                    self._admit()
                    if self.rows:
                        self._decode_step()
                    elif self.closing.is_set() and self._idle():
                        return
                    elif self._held is None:
                        with contextlib.suppress(queue.Empty):
                            self._held = self.queue.get(timeout=0.02)
                except Exception as e:  # never let one bad step kill the server: fail the running requests
                    log.exception("engine step failed")
                    self._fail_all(f"the engine failed on this batch: {type(e).__name__}: {e}")

    def _idle(self) -> bool:
        return self._held is None and self.queue.empty() and self.embed_queue.empty()

    def _drain_all(self) -> list[GenerationRequest | EmbeddingRequest]:
        out = [r.request for r in self.rows] + ([self._held] if self._held else [])
        for q in (self.queue, self.embed_queue):
            while not q.empty():
                with contextlib.suppress(queue.Empty):
                    out.append(q.get_nowait())
        return out

    def _fail_all(self, message: str) -> None:
        for row in self.rows:
            row.request.emit(Event(error=message))
        self.rows = []
        if self.cache is not None:
            self.cache.n, self.cache.clock = 0, 0
            self.cache.mask.zero_()

    def _next(self) -> GenerationRequest | None:
        if self._held is not None:
            req, self._held = self._held, None
            return req
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            return None

    def _admit(self) -> None:
        """Take waiting requests while slots are free (up to max_prefill_tokens of prompt) and prefill them."""
        batch, budget = [], self.cfg.max_prefill_tokens
        while self.cache is not None and self.cache.n + len(batch) < self.cache.slots and budget > 0:
            req = self._next()
            if req is None:
                break
            if req.cancelled.is_set():
                continue
            if time.monotonic() > req.deadline:
                req.emit(_timeout(self.cfg.request_timeout))
                continue
            budget -= req.length
            batch.append(req)
        if batch:
            self._prefill(batch)

    def _adapters(self, names: list[str | None]):
        return adapter_rows(self.model, names) if self.has_adapters else contextlib.nullcontext()

    def _media(self, visual: list[torch.Tensor | None]):
        """The rows' images for one forward pass (a vision-language model's; none when no row has images)."""
        shown = [v for v in visual if v is not None]
        if not shown:
            return contextlib.nullcontext()
        stacked = shown[0].new_zeros(len(visual), max(len(v) for v in shown), *shown[0].shape[1:])
        for i, v in enumerate(visual):
            if v is not None:
                stacked[i, : len(v)] = v
        counts = torch.tensor([0 if v is None else len(v) for v in visual], device=stacked.device)
        return self.model.seeing(stacked, counts)

    def _prefill_inputs(self, batch: list[GenerationRequest], width: int) -> dict[str, torch.Tensor]:
        """Left-padded prompts (k, width) as ids, or as embeddings when a soft prompt is in the batch
        ([virtual tokens; prompt tokens], as PromptModel lays them out), and each row's own positions."""
        lengths = torch.tensor([r.length for r in batch], device=self.device)
        positions = (torch.arange(width, device=self.device)[None] - (width - lengths)[:, None]).clamp(min=0)  # (k, W)
        ids = torch.zeros(len(batch), width, dtype=torch.long, device=self.device)  # (k, W)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
        if all(r.soft_prompt is None for r in batch):
            return {"input_ids": ids, "position_ids": positions}
        embeds = self.token_embedding(ids)  # (k, W, d)
        for i, r in enumerate(batch):
            if r.soft_prompt is not None:
                n = r.soft_prompt.shape[0]
                embeds[i, width - r.length : width - r.length + n] = r.soft_prompt.to(embeds)
        return {"inputs_embeds": embeds, "position_ids": positions}

    def _prefill(self, batch: list[GenerationRequest]) -> None:
        """One forward pass over the new prompts (left-padded to the longest), written into new cache rows."""
        cache = self.cache
        width = max(r.length for r in batch)
        first, start = cache.add_rows([r.length for r in batch])
        mask = cache.mask[first : first + len(batch), : cache.clock]  # (k, clock): only each row's own columns
        try:
            visual = [self.model.visual(r.images[None].to(self.device))[0] if r.images is not None else None
                      for r in batch]
            with self._adapters([r.adapter for r in batch]), self._media(visual):
                logits = self.model(**self._prefill_inputs(batch, width), attention_mask=mask,
                                    cache=cache.rows(first, first + len(batch)), start=start, last_only=True)
        except Exception as e:  # only these requests fail; the running batch goes on
            log.exception("prefill failed")
            for row in reversed(range(first, first + len(batch))):
                cache.remove(row)
            for r in batch:
                r.emit(Event(error=f"the engine failed on this request: {type(e).__name__}: {e}"))
            return
        self.metrics.add("groundup_prompt_tokens_total", sum(len(r.prompt_ids) for r in batch))
        for i, req in enumerate(batch):
            state = _Row(req, TextStream(self.tokenizer, req.config.stop), req.generator(self.device),
                         position=req.length, visual=visual[i])
            self.rows.append(state)
            self._accept(state, int(sample(logits[i : i + 1, -1], req.config, state.generator)[0]))
        self._free_finished()

    def _decode_step(self) -> None:
        now = time.monotonic()
        for row in self.rows:
            if row.request.cancelled.is_set():
                row.done = True
            elif now > row.request.deadline:
                row.request.emit(_timeout(self.cfg.request_timeout, row))
                row.done = True
        self._free_finished()
        if not self.rows:
            return
        cache = self.cache
        mask = cache.step_mask()  # (n, clock + 1)
        tokens = torch.tensor([[r.last] for r in self.rows], dtype=torch.long, device=self.device)  # (n, 1)
        positions = torch.tensor([[r.position] for r in self.rows], dtype=torch.long, device=self.device)  # (n, 1)
        with self._adapters([r.request.adapter for r in self.rows]), self._media([r.visual for r in self.rows]):
            logits = self.model(tokens, position_ids=positions, attention_mask=mask, cache=cache.rows(0, cache.n),
                                start=cache.clock, last_only=True)  # (n, 1, V)
        cache.advance()
        self.metrics.observe("groundup_batch_size", len(self.rows))
        for i, row in enumerate(self.rows):
            row.position += 1
            self._accept(row, int(sample(logits[i : i + 1, -1], row.request.config, row.generator)[0]))
        self._free_finished()

    def _accept(self, row: _Row, token: int) -> None:
        """Count, emit and check one sampled token of a row."""
        req, now = row.request, time.monotonic()
        row.generated += 1
        row.last = token
        self.metrics.add("groundup_generation_tokens_total", 1)
        if row.generated == 1:
            self.metrics.observe("groundup_time_to_first_token_seconds", now - req.created)
        else:
            self.metrics.observe("groundup_inter_token_latency_seconds", now - row.t_last)
        row.t_last = now
        if req.config.eos_id is not None and token == req.config.eos_id:
            return self._finish(row, row.stream.flush(), "stop")
        piece, stopped = row.stream.push(token)
        if stopped:
            return self._finish(row, piece, "stop")
        if row.generated >= req.config.max_new_tokens:
            return self._finish(row, piece + row.stream.flush(), "length")
        if piece:
            req.emit(Event(text=piece))

    def _finish(self, row: _Row, text: str, reason: str) -> None:
        req = row.request
        req.emit(Event(text=text, finish_reason=reason, prompt_tokens=len(req.prompt_ids),
                       completion_tokens=row.generated))
        self.metrics.observe("groundup_request_latency_seconds", time.monotonic() - req.created)
        row.done = True

    def _free_finished(self) -> None:
        for i in sorted((i for i, r in enumerate(self.rows) if r.done), reverse=True):
            self.cache.remove(i)  # the last row moves into i: mirror that in self.rows
            last = self.rows.pop()
            if i < len(self.rows):
                self.rows[i] = last

    def _embed_waiting(self) -> None:
        while not self.embed_queue.empty():
            try:
                req = self.embed_queue.get_nowait()
            except queue.Empty:
                return
            if req.cancelled.is_set():
                continue
            model, tok = self.encoder
            try:
                vectors = embed_texts(model, tok, req.texts)
            except ValueError as e:
                req.emit(Event(error=str(e), error_type="invalid_request_error"))
                continue
            self.metrics.add("groundup_prompt_tokens_total", sum(len(t) for t in tok.encode_batch(req.texts)))
            req.emit(vectors)


def _timeout(seconds: float, row: _Row | None = None) -> Event:
    done = f" after {row.generated} tokens" if row is not None else " while queued"
    return Event(error=f"the request timed out{done} (request_timeout={seconds:g}s); ask for fewer max_tokens "
                       "or retry when the server is less busy", error_type="timeout")
