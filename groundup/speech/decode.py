"""One 30 s window -> tokens: greedy, sampling (best of n) and beam search over a batch of windows.

    mel (B, n_mels, 3000) ─> encoder ─> cross-attention K/V, once per window (and shared by its beams)
    prompt per row: [<|startofprev|> previous text] <|startoftranscript|> [language task] [<|notimestamps|>]
        left-padded to one length (a pad mask and per-row positions keep each row as if decoded alone)
    each step: logits of the last token ─> rules.apply_rules ─> argmax | sample at T | beam search (top beam + 1)

The decoder self-attention keys and values live in a preallocated KVCache; beams reorder it in place. A window's
beams (or samples) share its cross-attention keys and values, read once per step for all of them (nn.attend).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.whisper import Whisper
from ..tokenizer_whisper import WhisperTokenizer
from .rules import Rules, apply_rules


@dataclass
class WindowResult:
    tokens: list[int]  # sampled tokens, end-of-text excluded
    sum_logprob: float
    avg_logprob: float  # per token, end-of-text counted (openai-whisper's)
    no_speech_prob: float
    temperature: float


def decoding_rules(model: Whisper, tokenizer: WhisperTokenizer, timestamps: bool,
                   suppress_blank: bool = True, max_initial_timestamp: float | None = 1.0) -> Rules:
    cfg = model.config
    device = model.decoder.embed.tok_emb.weight.device
    suppress = set(cfg.suppress_tokens or tokenizer.non_speech_tokens())
    suppress |= {tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm,
                 tokenizer.no_speech}
    begin = set(cfg.begin_suppress_tokens or [*tokenizer.encode(" "), tokenizer.eot]) if suppress_blank else set()
    ids = lambda s: torch.tensor(sorted(i for i in s if i is not None and i < cfg.n_vocab), dtype=torch.long,
                                 device=device)
    steps = None if max_initial_timestamp is None else round(max_initial_timestamp / 0.02)
    return Rules(ids(suppress), ids(begin), tokenizer.eot, tokenizer.timestamp_begin if timestamps else None,
                 tokenizer.no_timestamps, steps)


def _left_pad(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (B, P), pad mask (B, P), positions (B, P)) with each prompt right-aligned."""
    P = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), P), pad, dtype=torch.long)
    real = torch.zeros(len(prompts), P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = torch.tensor(p)
        real[i, P - len(p):] = True
    positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)
    return tokens.to(device), real.to(device), positions.to(device)


class _Stepper:
    """The decoder over R rows: a prompt forward, then one token per row per step, with an in-place cache."""

    def __init__(self, model: Whisper, memory_kv, prompts: list[list[int]], sample_len: int, pad: int) -> None:
        self.model = model
        tokens, self.real, positions = _left_pad(prompts, pad, memory_kv[0][0].device)
        R, P = tokens.shape
        self.cache = model.new_cache(R, P + sample_len)
        self.mask_all = torch.ones(R, P + sample_len, dtype=torch.bool, device=tokens.device)
        self.mask_all[:, :P] = self.real
        self.padded = padded = not bool(self.real.all())
        self.memory_kv, self.P, self.pos = memory_kv, P, positions[:, -1:]
        self.first = model.logits(tokens, memory_kv, self.cache, 0, self.mask_all[:, :P] if padded else None,
                                  positions if padded else None)  # (R, P, V)

    def step(self, last: torch.Tensor, t: int) -> torch.Tensor:
        """Logits (R, V) after feeding last (R,) as the t-th sampled token (t >= 1)."""
        start = self.P + t - 1
        self.pos = self.pos + 1
        mask = self.mask_all[:, :start + 1] if self.padded else None
        return self.model.logits(last[:, None], self.memory_kv, self.cache, start, mask,
                                 self.pos if self.padded else None)[:, -1]

    def reorder(self, index: torch.Tensor, filled: int) -> None:
        """Rows take the cache of the rows in index; only the filled positions are copied."""
        for buf in self.cache.k + self.cache.v:
            buf[:, :, :filled] = buf[:, :, :filled].index_select(0, index)
        self.mask_all, self.pos = self.mask_all.index_select(0, index), self.pos.index_select(0, index)


def _no_speech(first: torch.Tensor, prompts: list[list[int]], tokenizer: WhisperTokenizer) -> list[float]:
    """P(no speech) read at the <|startoftranscript|> position of each row."""
    P = first.shape[1]
    out = []
    for i, p in enumerate(prompts):
        at = P - len(p) + p.index(tokenizer.sot)
        out.append(float(first[i, at].float().softmax(-1)[tokenizer.no_speech]))
    return out


@torch.no_grad()
def decode_sampling(
    model: Whisper, tokenizer: WhisperTokenizer, memory: torch.Tensor, prompts: list[list[int]], rules: Rules,
    temperature: float = 0.0, best_of: int = 1, sample_len: int = 224, generator: torch.Generator | None = None,
) -> list[WindowResult]:
    """Greedy at temperature 0 (best_of ignored), else best_of samples per window, the most likely kept."""
    n = 1 if temperature == 0 else best_of
    rows = [p for p in prompts for _ in range(n)]
    stepper = _Stepper(model, model.memory_kv(memory), rows, sample_len, tokenizer.eot)  # rows share their window's K/V
    no_speech = _no_speech(stepper.first, rows, tokenizer)
    logits = stepper.first[:, -1]
    R = len(rows)
    sampled = torch.empty(R, 0, dtype=torch.long, device=memory.device)
    sum_lp = torch.zeros(R, device=memory.device)
    done = torch.zeros(R, dtype=torch.bool, device=memory.device)
    for t in range(sample_len):
        masked = apply_rules(logits, sampled, rules)
        if temperature == 0:
            nxt = masked.argmax(dim=-1)
        else:
            probs = (masked / temperature).softmax(dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        lp = masked.log_softmax(dim=-1).gather(1, nxt[:, None]).squeeze(1)
        sum_lp += lp * ~done
        nxt = nxt.masked_fill(done, tokenizer.eot)
        sampled = torch.cat([sampled, nxt[:, None]], dim=1)
        done |= nxt == tokenizer.eot
        if bool(done.all()) or t == sample_len - 1:
            break
        logits = stepper.step(nxt, t + 1)
    results = []
    for w in range(len(prompts)):
        cands = [_result(sampled[r], float(sum_lp[r]), no_speech[r], temperature, tokenizer.eot)
                 for r in range(w * n, (w + 1) * n)]
        results.append(max(cands, key=lambda c: c.sum_logprob / max(len(c.tokens), 1)))
    return results


def _result(row: torch.Tensor, sum_lp: float, no_speech: float, temperature: float, eot: int) -> WindowResult:
    tokens = row.tolist()
    tokens = tokens[: tokens.index(eot)] if eot in tokens else tokens
    return WindowResult(tokens, sum_lp, sum_lp / (len(tokens) + 1), no_speech, temperature)


@torch.no_grad()
def decode_beam(
    model: Whisper, tokenizer: WhisperTokenizer, memory: torch.Tensor, prompts: list[list[int]], rules: Rules,
    beam_size: int = 5, patience: float = 1.0, sample_len: int = 224,
) -> list[WindowResult]:
    """Beam search as openai-whisper's BeamSearchDecoder: each beam proposes its beam_size + 1 best tokens, the
    beam_size best unfinished continuations go on, finished ones are kept until round(beam_size * patience) are
    found; the answer is the finished sequence of best sum log-probability / length."""
    B, eot = len(prompts), tokenizer.eot
    rows = [p for p in prompts for _ in range(beam_size)]
    stepper = _Stepper(model, model.memory_kv(memory), rows, sample_len, eot)
    no_speech = _no_speech(stepper.first, rows, tokenizer)
    logits = stepper.first[:, -1]
    seqs: list[tuple[int, ...]] = [()] * (B * beam_size)
    scores = [0.0] * (B * beam_size)
    finished: list[dict[tuple[int, ...], float]] = [{} for _ in range(B)]
    max_candidates = round(beam_size * patience)
    for t in range(sample_len):
        sampled = torch.tensor([list(s) for s in seqs], dtype=torch.long, device=memory.device).view(len(seqs), t)
        logprobs = apply_rules(logits, sampled, rules).log_softmax(dim=-1)
        top_lp, top_id = logprobs.topk(beam_size + 1, dim=-1)
        top_lp, top_id = top_lp.tolist(), top_id.tolist()
        new_seqs, new_scores, sources = [], [], []
        for w in range(B):
            cand: dict[tuple[int, ...], tuple[float, int]] = {}
            for r in range(w * beam_size, (w + 1) * beam_size):
                for lp, tok in zip(top_lp[r], top_id[r], strict=True):
                    seq = seqs[r] + (tok,)
                    if seq not in cand:  # identical continuations of identical beams (the first step) count once
                        cand[seq] = (scores[r] + lp, r)
            kept = 0
            for seq in sorted(cand, key=lambda s: cand[s][0], reverse=True):
                if seq[-1] == eot:
                    if len(finished[w]) < max_candidates:
                        finished[w].setdefault(seq[:-1], cand[seq][0])
                    continue
                new_seqs.append(seq)
                new_scores.append(cand[seq][0])
                sources.append(cand[seq][1])
                kept += 1
                if kept == beam_size:  # finished ones ranked below the last live beam are dropped
                    break
        seqs, scores = new_seqs, new_scores
        if all(len(f) >= max_candidates for f in finished) or t == sample_len - 1:
            break
        stepper.reorder(torch.tensor(sources, device=memory.device), stepper.P + t)
        logits = stepper.step(torch.tensor([s[-1] for s in seqs], device=memory.device), t + 1)
    results = []
    for w in range(B):
        done = finished[w]
        if len(done) < beam_size:  # ran out of steps: the live beams count as finished
            live = range(w * beam_size, (w + 1) * beam_size)
            for r in sorted(live, key=lambda r: scores[r], reverse=True):
                done.setdefault(seqs[r], scores[r])
                if len(done) >= beam_size:
                    break
        best = max(done, key=lambda s: done[s] / max(len(s), 1))
        results.append(WindowResult(list(best), done[best], done[best] / (len(best) + 1),
                                    no_speech[w * beam_size], 0.0))
    return results


@torch.no_grad()
def detect_language(model: Whisper, tokenizer: WhisperTokenizer, memory: torch.Tensor) -> list[dict[str, float]]:
    """Per window: language code -> probability, from the token after <|startoftranscript|>."""
    sot = torch.full((memory.shape[0], 1), tokenizer.sot, dtype=torch.long, device=memory.device)
    logits = model.logits(sot, memory)[:, -1].float()
    codes = list(tokenizer.language_ids)
    ids = torch.tensor([tokenizer.language_ids[c] for c in codes], device=memory.device)
    probs = logits[:, ids].softmax(dim=-1)
    return [dict(zip(codes, row.tolist(), strict=True)) for row in probs]
