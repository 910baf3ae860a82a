"""Decoding an encoder-decoder model (models/seq2seq.py): greedy, sampling and beam search.

The source is encoded once, and each decoder layer's cross-attention keys and values of it are computed
once (Seq2Seq.memory_kv); the target then grows one token per step with a self-attention KV cache, so a
step costs one token through the decoder, not the whole prefix again.

    source ─> encode ─> memory ─> memory_kv (per decoder layer: k, v of the source)
                                     │
    <bos> ─> decode_step(token, cache, memory_kv) ─> sample / argmax ─> token ─> ... until <eos>
                └─ beam search: num_beams rows per source; each step keeps the num_beams best extensions
                   (summed log-probabilities), the cache rows follow their parents, and a hypothesis that
                   ends in <eos> is kept aside with score sum / length ** length_penalty.

With num_beams=1 and length_penalty=0 beam search is greedy decoding, step for step.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .generate import ContextLimitWarning, GenerationConfig, _cut_at_stop, sample


def _check_model(model: nn.Module) -> None:
    if getattr(model.config, "arch", None) != "seq2seq":
        raise ValueError(f"generate_seq2seq needs an encoder-decoder model (arch='seq2seq'); this one is "
                         f"arch={model.config.arch!r}: use groundup.generate for a decoder")


def _sources(model: nn.Module, sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded source ids (B, S) and their mask (B, S), True = real token."""
    block = model.config.block_size
    if not sources or any(len(s) == 0 for s in sources):
        raise ValueError("every source needs at least one token; got an empty one")
    longest = max(len(s) for s in sources)
    if longest > block:
        raise ValueError(f"a source of {longest} tokens is longer than the encoder's context "
                         f"(block_size={block}); shorten it")
    device = next(model.parameters()).device
    ids = torch.full((len(sources), longest), model.config.pad_id, dtype=torch.long)
    mask = torch.zeros(len(sources), longest, dtype=torch.bool)
    for row, s in enumerate(sources):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = True
    return ids.to(device), mask.to(device)


def _target_steps(model: nn.Module, max_new_tokens: int) -> int:
    """Target tokens that fit the decoder's positions: the input <bos> + n - 1 tokens must fit block_size."""
    return min(max_new_tokens, model.config.block_size)


def _warn_cut(model: nn.Module, steps: int, requested: int) -> None:
    warnings.warn(f"stopped after {steps} of {requested} tokens without <eos>: the decoder's context is "
                  f"{model.config.block_size} target positions (block_size); ask for at most that many",
                  ContextLimitWarning, stacklevel=3)


@torch.inference_mode()
def seq2seq_generate(model: nn.Module, sources: list[list[int]], cfg: GenerationConfig, bos_id: int,
                     eos_id: int) -> list[list[int]]:
    """Target ids for each source (cut after the first eos_id, which is kept). cfg.temperature=0 is greedy;
    otherwise temperature / top_k / top_p sampling with cfg.seed, as groundup.generate does for decoders;
    cfg.num_beams > 1 runs beam_search."""
    if cfg.num_beams > 1:
        return beam_search(model, sources, cfg.num_beams, cfg.max_new_tokens, bos_id, eos_id)
    _check_model(model)
    model.eval()
    src, src_mask = _sources(model, sources)
    B, steps, device = src.shape[0], _target_steps(model, cfg.max_new_tokens), src.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    memory_kv = model.memory_kv(model.encode(src, src_mask))
    cache = model.new_cache(B, steps)
    out = torch.full((B, steps), eos_id, dtype=torch.long, device=device)
    token = torch.full((B,), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(steps):
        logits = model.decode_step(token[:, None], memory_kv, src_mask, cache, t)  # (B, V)
        token = sample(logits, cfg, generator).masked_fill(done, eos_id)  # (B,)
        out[:, t] = token
        done |= token == eos_id
        if bool(done.all()):
            break
    else:
        if steps < cfg.max_new_tokens:
            _warn_cut(model, steps, cfg.max_new_tokens)
    return [_until_eos(row, eos_id) for row in out[:, : t + 1].tolist()]


def _until_eos(row: list[int], eos_id: int) -> list[int]:
    return row[: row.index(eos_id) + 1] if eos_id in row else row


def _reorder(cache, rows: torch.Tensor, filled: int) -> None:
    """Beam search: cache row i takes the first `filled` positions of row rows[i] (its parent)."""
    for buf in (*cache.k, *cache.v):
        buf[:, :, :filled] = buf[rows, :, :filled]  # (N, Hkv, filled, D)


@torch.inference_mode()
def beam_search(model: nn.Module, sources: list[list[int]], num_beams: int, max_new_tokens: int, bos_id: int,
                eos_id: int, length_penalty: float = 0.0) -> list[list[int]]:
    """The best target per source found with num_beams hypotheses (ids, ending in eos_id unless cut by
    max_new_tokens). Finished hypotheses score sum(log p) / length ** length_penalty: 0 (the default) ranks by
    probability, larger values favour longer targets (Wu et al. 2016). A source stops once no running
    hypothesis can still beat its best finished one, so the result is exact for this beam width."""
    _check_model(model)
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams={num_beams!r} must be a positive integer")
    if length_penalty < 0:
        raise ValueError(f"length_penalty={length_penalty} must be >= 0 (0 = rank by probability)")
    model.eval()
    src, src_mask = _sources(model, sources)
    B, K, steps, device = src.shape[0], num_beams, _target_steps(model, max_new_tokens), src.device
    memory_kv = [(k.repeat_interleave(K, 0), v.repeat_interleave(K, 0))  # (B*K, Hkv, S, D): beam b*K+j, source b
                 for k, v in model.memory_kv(model.encode(src, src_mask))]
    src_mask = src_mask.repeat_interleave(K, 0)  # (B*K, S)
    cache = model.new_cache(B * K, steps)
    seqs = torch.zeros(B, K, steps, dtype=torch.long, device=device)  # running hypotheses' tokens
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # the K beams start identical: only the first may expand at step 0
    best = torch.full((B,), float("-inf"), device=device)  # best finished score per source
    best_seq = torch.full((B, steps), eos_id, dtype=torch.long, device=device)
    token = torch.full((B * K,), bos_id, dtype=torch.long, device=device)
    base = torch.arange(B, device=device)[:, None] * K  # (B, 1): first cache row of each source
    for t in range(steps):
        logp = model.decode_step(token[:, None], memory_kv, src_mask, cache, t).float().log_softmax(-1)
        V = logp.shape[-1]
        cand, flat = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V).topk(min(2 * K, K * V), dim=-1)
        parent, tok = flat // V, flat % V  # (B, 2K) each
        cand_seqs = seqs.gather(1, parent[:, :, None].expand(-1, -1, steps)).clone()  # (B, 2K, steps)
        cand_seqs[:, :, t] = tok
        # An <eos> among the K best extensions finishes a hypothesis of length t + 1.
        ends = (tok == eos_id) & (torch.arange(cand.shape[1], device=device) < K)
        fin = torch.where(ends, cand / (t + 1) ** length_penalty, float("-inf")).max(dim=-1)  # (B,)
        better = fin.values > best
        best = torch.where(better, fin.values, best)
        best_seq = torch.where(better[:, None], cand_seqs[torch.arange(B, device=device), fin.indices], best_seq)
        # The K best extensions that do not end carry on.
        scores, keep = cand.masked_fill(tok == eos_id, float("-inf")).topk(K, dim=-1)  # (B, K)
        seqs = cand_seqs.gather(1, keep[:, :, None].expand(-1, -1, steps))
        # Log-probabilities only fall, so a running hypothesis scores at most its sum now over the longest length.
        reachable = scores[:, 0] / (steps ** length_penalty if length_penalty else 1.0)
        if t == steps - 1 or bool((best >= reachable).all()):
            break
        _reorder(cache, (base + parent.gather(1, keep)).flatten(), t + 1)
        token = tok.gather(1, keep).flatten()  # (B*K,)
    running = scores[:, 0] / (steps ** length_penalty if length_penalty else 1.0)
    take_running = (running > best).tolist()
    if any(take_running) and steps < max_new_tokens:
        _warn_cut(model, steps, max_new_tokens)
    rows = []
    for b in range(B):
        row = seqs[b, 0, : t + 1] if take_running[b] else best_seq[b]
        rows.append(_until_eos(row.tolist(), eos_id))
    return rows


def translate_text(model: nn.Module, tokenizer, sources: list[str] | str, cfg: GenerationConfig) -> list[str] | str:
    """Target text for one source (returns a str) or a batch (a list): the tokenizer's <bos> starts each target
    and its <eos> ends it; cut at cfg.stop strings."""
    bos, eos = tokenizer.bos_id, cfg.eos_id if cfg.eos_id is not None else tokenizer.eos_id
    if bos is None or eos is None:
        raise ValueError("decoding an encoder-decoder model needs the tokenizer's <bos> and <eos> tokens (a "
                         "checkpoint from groundup pretrain has them); this tokenizer lacks "
                         f"{' and '.join(n for n, i in (('<bos>', bos), ('<eos>', eos)) if i is None)}")
    batch = [sources] if isinstance(sources, str) else sources
    rows = seq2seq_generate(model, [tokenizer.encode(s) for s in batch], cfg, bos, eos)
    texts = [_cut_at_stop(tokenizer.decode([t for t in r if t != eos]), cfg.stop)[0] for r in rows]
    return texts[0] if isinstance(sources, str) else texts
