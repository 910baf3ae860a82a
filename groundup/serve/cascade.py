"""LLM cascades (FrugalGPT, Chen, Zaharia & Zou 2023): ask the cheapest model first and pay for a bigger one only
when the answer looks unreliable.

    query ─> member 0 ─> answer, score >= thresholds[0]? ─ yes ─> accept
                                        │ no
                                        └─> member 1 ─> answer, score >= thresholds[1]? ─ yes ─> accept
                                                                   │ no
                                                                   └─> ... ─> last member: always accepted

A member is (name, model, tokenizer, generation settings, cost model). Its answers come from groundup's greedy
`generate`; the token log-probabilities come from one extra forward pass over prompt + answer (greedy decoding is
deterministic, so validation answers are exactly the answers the cascade will give). The score is the answer's
mean token log-probability by default, or a trained LogisticScorer (cascade_fit.py). The cost of a query is the
sum over every member asked, the ones escalated from included. Thresholds are set by hand or fitted on a
validation set to a cost budget (Cascade.fit; the search is described in cascade_fit.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import nn

from ..data.arithmetic import exact_match
from ..generate import GenerationConfig, generate
from ..tokenizer import Tokenizer
from .cascade_fit import ThresholdFit, fit_thresholds, mean_logprob


@dataclass(frozen=True)
class CostModel:
    """Cost of one call: input_price per prompt token + output_price per generated token (an API's price list),
    or CostModel.per_parameter(model): parameters x tokens, proportional to forward-pass FLOPs (about 2 per
    parameter per token, Kaplan et al. 2020)."""

    input_price: float
    output_price: float
    unit: str = "price units"

    def __post_init__(self) -> None:
        for name in ("input_price", "output_price"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"CostModel.{name}={value!r}: a price must be a finite number >= 0")

    @classmethod
    def per_parameter(cls, params: int | nn.Module) -> CostModel:
        """Cost = parameters x (prompt + generated tokens); `params` is a count or the model to count."""
        n = sum(p.numel() for p in params.parameters()) if isinstance(params, nn.Module) else params
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"CostModel.per_parameter(params={params!r}): give a positive count or a model")
        return cls(float(n), float(n), unit="parameter-tokens")

    def __call__(self, n_input: int, n_output: int) -> float:
        return self.input_price * n_input + self.output_price * n_output


@dataclass(frozen=True)
class Answer:
    """One member's answer to one query: the text, the log-probability of every generated token (eos included),
    the prompt length and what the call cost."""

    member: str
    text: str
    token_logprobs: tuple[float, ...]
    n_input_tokens: int
    cost: float

    @property
    def n_output_tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def mean_logprob(self) -> float:
        return sum(self.token_logprobs) / len(self.token_logprobs) if self.token_logprobs else 0.0

    @property
    def min_logprob(self) -> float:
        return min(self.token_logprobs, default=0.0)


Scorer = Callable[[Answer], float]


class Answerer(Protocol):
    """What a cascade stage must offer: a unique name and answers to a batch of queries."""

    name: str

    def answer(self, queries: Sequence[str], batch_size: int = 16) -> list[Answer]: ...


@torch.inference_mode()
def answer_logprobs(model: nn.Module, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                    ) -> list[list[float]]:
    """log p(answer token | prompt, earlier answer tokens) for each (prompt, answer) pair, in one forward pass.
    Rows are right-padded: under the causal mask no real position sees the padding, so no mask is needed."""
    model.eval()
    seqs = [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]
    device = next(model.parameters()).device
    ids = torch.zeros(len(seqs), max(len(s) for s in seqs), dtype=torch.long, device=device)  # (B, T)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    logp = model(ids).float().log_softmax(-1)  # (B, T, V)
    out = []
    for row, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        target = torch.tensor(list(a), dtype=torch.long, device=device)  # (A,)
        picked = logp[row, len(p) - 1: len(p) - 1 + len(a)].gather(-1, target[:, None])  # (A, 1)
        out.append(picked.squeeze(-1).tolist())
    return out


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    hits = [text.index(s) for s in stop if s in text]
    return text[: min(hits)] if hits else text


@dataclass
class CascadeMember:
    """One stage: `template` renders a query into the prompt ("{query}" is replaced; e.g. "Q: {query}\\nA:");
    generation must be greedy (temperature 0) so that answers fitted on are the answers served."""

    name: str
    model: nn.Module
    tokenizer: Tokenizer
    cost: CostModel
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=32, temperature=0))
    template: str = "{query}"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"CascadeMember.name={self.name!r}: give each member a non-empty name")
        if self.generation.temperature != 0:
            raise ValueError(f"CascadeMember {self.name!r}: generation.temperature={self.generation.temperature}; a "
                             "cascade decodes greedily (temperature=0) so validation answers match served answers")
        if self.template.count("{query}") != 1:
            raise ValueError(f"CascadeMember {self.name!r}: template={self.template!r} must contain '{{query}}' "
                             "exactly once, e.g. 'Q: {query}\\nA:'")
        if not isinstance(self.cost, CostModel):
            raise ValueError(f"CascadeMember {self.name!r}: cost={self.cost!r}; pass a CostModel, e.g. "
                             "CostModel(input_price=1e-6, output_price=2e-6) or CostModel.per_parameter(model)")
        if self.generation.eos_id is None and self.tokenizer.eos_id is not None:
            self.generation = replace(self.generation, eos_id=self.tokenizer.eos_id)

    def answer(self, queries: Sequence[str], batch_size: int = 16) -> list[Answer]:
        """Greedy answers to `queries`, `batch_size` at a time, each with its token log-probs and cost."""
        prompts = self.tokenizer.encode_batch([self.template.replace("{query}", q) for q in queries])
        eos = self.generation.eos_id
        out: list[Answer] = []
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i: i + batch_size]
            rows = generate(self.model, chunk, self.generation)
            for p, r, lp in zip(chunk, rows, answer_logprobs(self.model, chunk, rows), strict=True):
                text = _cut_at_stop(self.tokenizer.decode([t for t in r if t != eos]), self.generation.stop)
                out.append(Answer(self.name, text, tuple(lp), len(p), self.cost(len(p), len(r))))
        return out


@dataclass(frozen=True)
class CascadeResult:
    """The accepted answer, who gave it (member name and stage), its score, the total cost of the query (every
    member asked), and every answer tried on the way with its score."""

    text: str
    member: str
    stage: int
    score: float
    cost: float
    tried: tuple[Answer, ...]
    scores: tuple[float, ...]


class Cascade:
    """Cascade(members, scorer, thresholds): members from cheapest to most expensive; stage i keeps its answer when
    scorer(answer) >= thresholds[i], else escalates; the last member's answer is always accepted."""

    def __init__(self, members: Sequence[Answerer], scorer: Scorer = mean_logprob,
                 thresholds: Sequence[float] | None = None) -> None:
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"Cascade(members=...): got {len(members)} member(s); a cascade needs at least two "
                             "models (cheapest first). With one model, call it directly")
        for i, m in enumerate(members):
            if not isinstance(getattr(m, "name", None), str) or not callable(getattr(m, "answer", None)):
                raise ValueError(f"Cascade(members=...): members[{i}]={m!r} is not a CascadeMember (needs a name and "
                                 "an answer(queries) method)")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"Cascade(members=...): member names {names} repeat; give each member its own name")
        if not callable(scorer):
            raise ValueError(f"Cascade(scorer={scorer!r}): the scorer must be callable on an Answer, e.g. "
                             "mean_logprob or a fitted LogisticScorer")
        self.members, self.scorer = members, scorer
        self._thresholds: tuple[float, ...] | None = None
        if thresholds is not None:
            self.thresholds = thresholds

    @property
    def thresholds(self) -> tuple[float, ...] | None:
        return self._thresholds

    @thresholds.setter
    def thresholds(self, values: Sequence[float]) -> None:
        values = tuple(values)
        need = len(self.members) - 1
        if len(values) != need:
            raise ValueError(f"Cascade(thresholds=...): got {len(values)} threshold(s) for {len(self.members)} "
                             f"models; give exactly {need}, one per model but the last (whose answer is always "
                             "accepted)")
        if any(not isinstance(t, int | float) or math.isnan(t) for t in values):
            raise ValueError(f"Cascade(thresholds={values}): every threshold must be a number (-inf = always accept, "
                             "inf = always escalate)")
        self._thresholds = tuple(float(t) for t in values)

    def _score(self, answer: Answer) -> float:
        s = float(self.scorer(answer))
        if math.isnan(s):
            raise ValueError(f"the scorer returned NaN for {answer.member!r}'s answer {answer.text!r}")
        return s

    def _route(self, n: int, answers_at: Callable[[int, list[int]], list[Answer]]) -> list[CascadeResult]:
        if self._thresholds is None:
            raise ValueError("Cascade.thresholds are not set: pass thresholds=[...] or call fit(...) on a validation "
                             "set first")
        results: list[CascadeResult | None] = [None] * n
        tried: list[list[Answer]] = [[] for _ in range(n)]
        scores: list[list[float]] = [[] for _ in range(n)]
        pending, last = list(range(n)), len(self.members) - 1
        for stage, member in enumerate(self.members):
            if not pending:
                break
            answers = answers_at(stage, pending)
            if len(answers) != len(pending):
                raise RuntimeError(f"member {member.name!r} returned {len(answers)} answers for {len(pending)} queries")
            escalated = []
            for i, a in zip(pending, answers, strict=True):
                s = self._score(a)
                tried[i].append(a)
                scores[i].append(s)
                if stage == last or s >= self._thresholds[stage]:
                    results[i] = CascadeResult(a.text, a.member, stage, s, sum(x.cost for x in tried[i]),
                                               tuple(tried[i]), tuple(scores[i]))
                else:
                    escalated.append(i)
            pending = escalated
        return results  # type: ignore[return-value]  # every query is answered by the last stage at the latest

    def run(self, queries: Sequence[str], batch_size: int = 16) -> list[CascadeResult]:
        """Answer every query; each stage sees only the queries escalated to it, in batches."""
        if isinstance(queries, str):
            raise TypeError("Cascade.run(queries) takes a list of strings; for one query call cascade(query)")
        queries = list(queries)
        return self._route(len(queries), lambda stage, idx: self.members[stage].answer(
            [queries[i] for i in idx], batch_size))

    def __call__(self, query: str) -> CascadeResult:
        return self.run([query])[0]

    def replay(self, answers: Sequence[Sequence[Answer]]) -> list[CascadeResult]:
        """What run() returns, from every member's precomputed answer to every query ((M, N) as answer_all gives):
        greedy answers do not change, so a threshold sweep needs each model run once."""
        n = self._check_table("answers", answers)
        return self._route(n, lambda stage, idx: [answers[stage][i] for i in idx])

    def spec(self, models: Mapping[str, str], adapters: Mapping[str, str] | None = None) -> dict:
        """The JSON spec `groundup serve --cascade NAME=FILE` serves (json.dumps it to FILE): `models` maps each
        member's name to its model (a folder, a packaged name, or "base" for the server's --model), `adapters`
        the members that add a LoRA / IA3 / BitFit adapter folder. Only the mean_logprob scorer can be written."""
        if self.scorer is not mean_logprob or self._thresholds is None:
            raise ValueError("Cascade.spec: a spec holds thresholds and the mean_logprob scorer; set thresholds (or "
                             "fit) and use scorer=mean_logprob")
        adapters = adapters or {}
        members = []
        for m in self.members:
            if not isinstance(m, CascadeMember) or m.name not in models:
                raise ValueError(f"Cascade.spec: member {m.name!r} needs to be a CascadeMember named in `models`")
            per_parameter = m.cost.unit == "parameter-tokens"
            cost = {"per_parameter": True} if per_parameter else {"input_price": m.cost.input_price,
                                                                  "output_price": m.cost.output_price}
            members.append({"name": m.name, "model": str(models[m.name]), "template": m.template, "cost": cost,
                            "max_new_tokens": m.generation.max_new_tokens, "stop": list(m.generation.stop)}
                           | ({"adapter": str(adapters[m.name])} if m.name in adapters else {}))
        return {"members": members, "thresholds": list(self._thresholds), "scorer": "mean_logprob"}

    def answer_all(self, queries: Sequence[str], batch_size: int = 16) -> list[list[Answer]]:
        """Every member's answer to every query: (M, N)."""
        return [m.answer(list(queries), batch_size) for m in self.members]

    def _check_table(self, name: str, table: Sequence[Sequence[object]], n: int | None = None) -> int:
        if len(table) != len(self.members):
            raise ValueError(f"{name}: {len(table)} rows for {len(self.members)} members; give one row per member")
        lengths = [len(row) for row in table]
        if len(set(lengths)) != 1 or (n is not None and lengths[0] != n):
            raise ValueError(f"{name}: rows have lengths {lengths}" + (f", expected {n} each" if n is not None else "")
                             + "; every member needs one entry per validation query")
        return lengths[0]

    def fit_answers(self, answers: Sequence[Sequence[Answer]], correct: Sequence[Sequence[bool]],
                    budget: float) -> ThresholdFit:
        """Fit thresholds to `budget` (mean cost per query) from precomputed (M, N) answers and correct labels."""
        n = self._check_table("answers", answers)
        self._check_table("correct", correct, n)
        scores = [[self._score(a) for a in row] for row in answers[:-1]]
        costs = [[a.cost for a in row] for row in answers]
        fit = fit_thresholds(scores, correct, costs, budget)
        self.thresholds = fit.thresholds
        return fit

    def fit(self, queries: Sequence[str], references: Sequence[str], budget: float,
            is_correct: Callable[[str, str], bool] = exact_match, batch_size: int = 16) -> ThresholdFit:
        """Run every member on the validation queries, label each answer with is_correct(answer, reference), and
        set the thresholds that maximise validation accuracy with mean cost per query <= budget."""
        if isinstance(queries, str) or isinstance(references, str):
            raise TypeError("Cascade.fit(queries, references): pass lists of strings")
        if len(queries) != len(references):
            raise ValueError(f"Cascade.fit: {len(queries)} queries but {len(references)} references; give one "
                             "reference answer per validation query")
        if not queries:
            raise ValueError("Cascade.fit: no validation queries; give at least one")
        answers = self.answer_all(queries, batch_size)
        correct = [[bool(is_correct(a.text, ref)) for a, ref in zip(row, references, strict=True)] for row in answers]
        return self.fit_answers(answers, correct, budget)


__all__ = ["Answer", "Answerer", "Cascade", "CascadeMember", "CascadeResult", "CostModel", "Scorer",
           "answer_logprobs"]
