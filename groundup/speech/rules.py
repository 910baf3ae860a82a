"""What Whisper may say next: masks applied to each decoding step's logits, vectorised over rows.

    suppress_tokens        never: non-speech symbols, the task and start tokens, no-speech
    suppress_blank         not first: a blank (" ") or end-of-text as the first sampled token
    timestamp rules        timestamps come in pairs (text, then a closing and an opening one), never decrease,
                           the first token is a timestamp of at most max_initial_timestamp seconds, and when the
                           timestamps together outweigh every text token, a timestamp it is
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rules:
    suppress: torch.Tensor  # ids never sampled
    begin_suppress: torch.Tensor  # ids not sampled first
    eot: int
    timestamp_begin: int | None  # None: no timestamps (no_timestamps is in the prompt)
    no_timestamps: int
    max_initial_timestamp: int | None = 50  # in 0.02 s steps: 1.0 s


def apply_rules(logits: torch.Tensor, sampled: torch.Tensor, rules: Rules) -> torch.Tensor:
    """logits (R, V) for the next token after sampled (R, t) tokens (the prompt excluded). Returns a masked copy."""
    logits = logits.float().clone()
    neg = float("-inf")
    logits[:, rules.suppress] = neg
    t = sampled.shape[1]
    if t == 0:
        logits[:, rules.begin_suppress] = neg
    tb = rules.timestamp_begin
    if tb is None:
        return logits
    logits[:, rules.no_timestamps] = neg
    if t == 0:
        logits[:, :tb] = neg  # the first token is a timestamp
        if rules.max_initial_timestamp is not None:
            logits[:, tb + rules.max_initial_timestamp + 1:] = neg
    else:
        is_ts = sampled >= tb  # (R, t)
        last = is_ts[:, -1]
        penultimate = is_ts[:, -2] if t >= 2 else torch.ones_like(last)
        logits[last & penultimate, tb:] = neg  # a pair just closed: text (or end-of-text) comes next
        logits[last & ~penultimate, :rules.eot] = neg  # an opening timestamp: its pair or the end
        # no decreasing timestamps, and each segment lasts at least one step (no loops on an empty segment)
        last_ts = torch.where(is_ts, sampled, torch.full_like(sampled, -1)).amax(dim=1)  # (R,), -1: none yet
        floor = torch.where(last & ~penultimate, last_ts, last_ts + 1)
        ids = torch.arange(tb, logits.shape[1], device=logits.device)
        logits[:, tb:] = logits[:, tb:].masked_fill((last_ts >= 0)[:, None] & (ids[None] < floor[:, None]), neg)
    logprobs = logits.log_softmax(dim=-1)
    timestamp_mass = logprobs[:, tb:].logsumexp(dim=-1)
    best_text = logprobs[:, :tb].amax(dim=-1)
    logits[timestamp_mass > best_text, :tb] = neg
    return logits
