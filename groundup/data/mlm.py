"""BERT pretraining data: masked-LM + next-sentence prediction (Devlin et al. 2019, sec. 3.1).

One example, built on the fly from `generator` only:

    document d: [s0 s1 s2 s3 ...]   pick a run of sentences si..sk that fits block_size
                 \\_A_/ \\__B__/      split it at a random point into A | B
    50%: B = the true continuation          nsp_label 0  (HF BertForPreTraining convention)
    50%: B = sentences of another document  nsp_label 1
    input: [CLS] A [SEP] B [SEP]  token_type 0...0 1...1, then mask_tokens() on it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from groundup.tokenizer import Tokenizer

IGNORE_INDEX = -100  # labels the loss skips (torch cross_entropy's default ignore_index)


def mask_tokens(input_ids: torch.Tensor, special_mask: torch.Tensor, mask_id: int, vocab_size: int,
                generator: torch.Generator, p: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking. Each token where `special_mask` is False is selected with probability `p`;
    a selected token becomes [MASK] 80% of the time, a uniformly random id in [0, vocab_size)
    10%, and stays as it is 10% (so the model cannot trust unmasked tokens blindly).
    Returns (new input_ids, labels) with labels = original id where selected, else -100.
    Per-token Bernoulli selection, as in HF DataCollatorForLanguageModeling."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"mask_tokens(p={p}): the masking probability must be in (0, 1), BERT uses 0.15")
    if special_mask.shape != input_ids.shape:
        raise ValueError(f"mask_tokens: special_mask shape {tuple(special_mask.shape)} must equal "
                         f"input_ids shape {tuple(input_ids.shape)}")
    selected = (torch.rand(input_ids.shape, generator=generator) < p) & ~special_mask
    labels = torch.where(selected, input_ids, IGNORE_INDEX)
    action = torch.rand(input_ids.shape, generator=generator)  # 80 / 10 / 10 split
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    out = torch.where(selected & (action < 0.8), mask_id, input_ids)
    out = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, out)
    return out, labels


def split_documents(text: str) -> list[list[str]]:
    """Documents are separated by blank lines, sentences end with . ! or ? (a simple splitter:
    good enough for NSP, where 'sentence' really means 'contiguous span of text')."""
    docs = [d.strip() for d in re.split(r"\n\s*\n", text)]
    return [[s for s in re.split(r"(?<=[.!?])\s+", d) if s] for d in docs if d]


class MLMData:
    """MLM + NSP batches from `documents`: each a list of sentences, each a list of token ids
    (no special tokens). The last `val_fraction` of the documents form the "val" split."""

    def __init__(self, documents: Sequence[Sequence[Sequence[int]]], tokenizer: Tokenizer,
                 block_size: int, val_fraction: float = 0.1, mlm_probability: float = 0.15) -> None:
        ids = {n: getattr(tokenizer, f"{n}_id") for n in ("cls", "sep", "pad", "mask")}
        if None in ids.values():
            missing = [n for n, i in ids.items() if i is None]
            raise ValueError(f"MLMData: tokenizer lacks special tokens {missing}; use train_wordpiece "
                             "or wordpiece_from_vocab, which have [CLS] [SEP] [PAD] [MASK]")
        if block_size < 5:
            raise ValueError(f"MLMData(block_size={block_size}): needs >= 5 ([CLS] A [SEP] B [SEP])")
        self.cls_id, self.sep_id, self.pad_id, self.mask_id = ids.values()
        self.vocab_size, self.block_size, self.p = tokenizer.vocab_size, block_size, mlm_probability
        self.special_ids = torch.tensor(sorted(tokenizer.special_ids | {self.pad_id}))
        docs = [[list(s) for s in d if len(s)] for d in documents]
        docs = [d for d in docs if d]
        n_val = round(len(docs) * val_fraction)
        self.splits = {"train": docs[: len(docs) - n_val], "val": docs[len(docs) - n_val:]}
        # documents with a true "next sentence" to offer; any document can supply a random B
        self._pairable = {k: [i for i, d in enumerate(ds) if len(d) >= 2] for k, ds in self.splits.items()}
        for split, ds in self.splits.items():
            if (ds or split == "train") and (len(ds) < 2 or not any(len(d) >= 2 for d in ds)):
                raise ValueError(
                    f"MLMData: split {split!r} has {len(ds)} documents; NSP needs >= 2 documents and one "
                    "with >= 2 sentences; pass more text (documents are separated by blank lines) or "
                    "change val_fraction"
                )

    @classmethod
    def from_text(cls, text: str, tokenizer: Tokenizer, block_size: int, val_fraction: float = 0.1,
                  mlm_probability: float = 0.15) -> MLMData:
        """Split `text` with `split_documents` and tokenize every sentence (batched)."""
        docs = split_documents(text)
        flat = tokenizer.encode_batch([s for d in docs for s in d])
        it = iter(flat)
        return cls([[next(it) for _ in d] for d in docs], tokenizer, block_size, val_fraction, mlm_probability)

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{"input_ids", "token_type_ids", "attention_mask" (1 = real, 0 = pad), "labels" (-100 =
        not predicted), "nsp_labels" (0 = B follows A, 1 = random)}, each (B, L) with L <= block_size
        the longest example (nsp_labels is (B,)). Randomness comes only from `generator`."""
        docs = self.splits.get(split)
        if not docs:
            raise ValueError(f"get_batch(split={split!r}): no such split or it is empty; "
                             f"use 'train', or 'val' with val_fraction > 0")
        examples = [self._example(docs, self._pairable[split], generator) for _ in range(batch_size)]
        L = max(len(ids) for ids, _, _ in examples)
        input_ids = torch.full((batch_size, L), self.pad_id, dtype=torch.long)  # (B, L)
        token_type_ids = torch.zeros((batch_size, L), dtype=torch.long)  # (B, L)
        for b, (ids, tt, _) in enumerate(examples):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            token_type_ids[b, : len(tt)] = torch.tensor(tt)
        attention_mask = (torch.arange(L) < torch.tensor([len(e[0]) for e in examples])[:, None]).long()
        special = torch.isin(input_ids, self.special_ids)
        masked, labels = mask_tokens(input_ids, special, self.mask_id, self.vocab_size, generator, self.p)
        return {"input_ids": masked, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                "labels": labels, "nsp_labels": torch.tensor([e[2] for e in examples])}

    def _example(self, docs: list[list[list[int]]], pairable: list[int],
                 g: torch.Generator) -> tuple[list[int], list[int], int]:
        budget = self.block_size - 3  # room left after [CLS] [SEP] [SEP]
        d = pairable[_randint(len(pairable), g)]
        doc = docs[d]
        start = _randint(len(doc) - 1, g)
        end = start + 2  # a run of >= 2 sentences, grown while it fits the budget
        while end < len(doc) and sum(map(len, doc[start:end + 1])) <= budget:
            end += 1
        cut = start + 1 + _randint(end - start - 1, g)
        a = [t for s in doc[start:cut] for t in s]
        is_random = int(torch.rand((), generator=g) < 0.5)
        if is_random:
            other = _randint(len(docs) - 1, g)
            other += other >= d  # any document but d
            odoc = docs[other]
            b = []
            for s in odoc[_randint(len(odoc), g):]:  # a run from a random position, up to the budget
                b += s
                if len(a) + len(b) >= budget:
                    break
        else:
            b = [t for s in doc[cut:end] for t in s]
        while len(a) + len(b) > budget:  # trim the longer side away from the A|B boundary
            if len(a) > len(b):
                a.pop(0)
            else:
                b.pop()
        ids = [self.cls_id, *a, self.sep_id, *b, self.sep_id]
        return ids, [0] * (len(a) + 2) + [1] * (len(b) + 1), is_random


def _randint(n: int, g: torch.Generator) -> int:
    """Uniform int in [0, n) from generator `g`."""
    return int(torch.randint(n, (1,), generator=g))
