"""LLM cascades: the threshold search against hand-computed and brute-force answers, escalation with stub members
whose scores and costs are known, two tiny real decoders end to end (answers = groundup's generate, log-probs = an
unpadded forward), the logistic scorer, and clear errors for bad input."""

from __future__ import annotations

import itertools
import string
from collections.abc import Sequence

import numpy as np
import pytest
import torch

import groundup
from groundup.config import preset
from groundup.generate import GenerationConfig, generate_text
from groundup.models import build_model
from groundup.serve import (
    Answer,
    Cascade,
    CascadeMember,
    CostModel,
    LogisticScorer,
    fit_thresholds,
    mean_logprob,
)
from groundup.tokenizer import char_tokenizer

# --- threshold search -------------------------------------------------------------------------------------------
SMALL_SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
SMALL_RIGHT = [1, 1, 0, 1, 0, 0]
LARGE_RIGHT = [1, 1, 1, 1, 1, 0]
COSTS = [[1.0] * 6, [10.0] * 6]


def test_fit_finds_the_one_threshold_with_the_best_accuracy_under_the_budget():
    # Keeping the k best-scored small answers costs 1 + 10 (6 - k) / 6 and gets, by hand:
    # k=6: 3/6 (cost 1), k=5: 3/6, k=4: 4/6, k=3: 4/6, k=2: 5/6 (cost 7.67), k=1: 5/6 (9.33), k=0: 5/6 (11).
    # Budget 8 allows k >= 2, and only k = 2 reaches 5/6: the threshold must split 0.8 | 0.7.
    fit = fit_thresholds([SMALL_SCORES], [SMALL_RIGHT, LARGE_RIGHT], COSTS, budget=8.0)
    assert 0.7 < fit.thresholds[0] <= 0.8
    assert fit.accuracy == pytest.approx(5 / 6)
    assert fit.mean_cost == pytest.approx(1 + 40 / 6)
    assert fit.answered_share == pytest.approx((2 / 6, 4 / 6))
    # A loose budget: k = 0, 1, 2 tie at 5/6, and the cheapest of them (k = 2) is kept.
    assert 0.7 < fit_thresholds([SMALL_SCORES], [SMALL_RIGHT, LARGE_RIGHT], COSTS, budget=100.0).thresholds[0] <= 0.8
    # Budget 2: only k = 6 (cost 1) fits, i.e. never escalate.
    tight = fit_thresholds([SMALL_SCORES], [SMALL_RIGHT, LARGE_RIGHT], COSTS, budget=2.0)
    assert tight.thresholds[0] <= 0.4 and tight.accuracy == pytest.approx(3 / 6) and tight.mean_cost == 1.0


def brute_force(scores, correct, costs, budget) -> float:
    """Best accuracy within budget over every threshold vector built from observed scores (query by query)."""
    n_stage, n = np.asarray(correct).shape
    options = [sorted(set(s)) + [np.inf] for s in scores]
    best = -1.0
    for ts in itertools.product(*options):
        right = spent = 0.0
        for q in range(n):
            for stage in range(n_stage):
                spent += costs[stage][q]
                if stage == n_stage - 1 or scores[stage][q] >= ts[stage]:
                    right += correct[stage][q]
                    break
        if spent / n <= budget + 1e-9:
            best = max(best, right / n)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_three_stage_fit_matches_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    n = 9
    scores = rng.normal(size=(2, n)).round(3).tolist()
    correct = (rng.random((3, n)) < [[0.5], [0.7], [0.9]]).astype(int).tolist()
    costs = (rng.random((3, n)) * [[1], [5], [20]] + [[1], [5], [20]]).tolist()
    budget = float(np.mean(costs[0]) + np.mean(costs[1]) * 0.6 + np.mean(costs[2]) * 0.3)
    fit = fit_thresholds(scores, correct, costs, budget)
    assert fit.accuracy == pytest.approx(brute_force(scores, correct, costs, budget))
    assert fit.mean_cost <= budget + 1e-9
    # Replaying the chosen thresholds query by query gives the reported accuracy and cost.
    right = spent = 0.0
    for q in range(n):
        for stage in range(3):
            spent += costs[stage][q]
            if stage == 2 or scores[stage][q] >= fit.thresholds[stage]:
                right += correct[stage][q]
                break
    assert right / n == pytest.approx(fit.accuracy) and spent / n == pytest.approx(fit.mean_cost)


# --- escalation with stub members ---------------------------------------------------------------------------------
class StubMember:
    """Answers from a table {query: (text, token log-probs)}; the cost is a CostModel on len(query) input tokens and
    one output token per log-prob. Records which queries it was asked."""

    def __init__(self, name: str, table: dict[str, tuple[str, list[float]]], cost: CostModel) -> None:
        self.name, self.table, self.cost, self.asked = name, table, cost, []

    def answer(self, queries: Sequence[str], batch_size: int = 16) -> list[Answer]:
        self.asked += list(queries)
        out = []
        for q in queries:
            text, lp = self.table[q]
            out.append(Answer(self.name, text, tuple(lp), len(q), self.cost(len(q), len(lp))))
        return out


QUERIES = ["aa", "bbb", "c", "dddd"]


def stubs() -> tuple[StubMember, StubMember]:
    small = StubMember("small", {"aa": ("1", [-0.1, -0.1]), "bbb": ("2", [-2.0]), "c": ("3", [-0.5, -0.5]),
                                 "dddd": ("4", [-3.0, -1.0])}, CostModel(input_price=1.0, output_price=2.0))
    large = StubMember("large", {q: (q.upper(), [-0.2]) for q in QUERIES},
                       CostModel(input_price=10.0, output_price=20.0))
    return small, large


def test_confident_answers_are_kept_and_unsure_ones_escalate_with_costs_adding_up():
    small, large = stubs()
    results = Cascade([small, large], mean_logprob, thresholds=[-1.0]).run(QUERIES)
    # mean log-probs -0.1, -2.0, -0.5, -2.0: "aa" and "c" stay, "bbb" and "dddd" go on, and only they.
    assert large.asked == ["bbb", "dddd"]
    assert [r.member for r in results] == ["small", "large", "small", "large"]
    assert [r.stage for r in results] == [0, 1, 0, 1]
    assert [r.text for r in results] == ["1", "BBB", "3", "DDDD"]
    assert [r.score for r in results] == pytest.approx([-0.1, -0.2, -0.5, -0.2])
    # cost = small (1 per input char + 2 per token) [+ large (10 per input char + 20 per token)], by hand:
    # aa: 2 + 4 = 6; bbb: (3 + 2) + (30 + 20) = 55; c: 1 + 4 = 5; dddd: (4 + 4) + (40 + 20) = 68
    assert [r.cost for r in results] == pytest.approx([6, 55, 5, 68])
    assert [len(r.tried) for r in results] == [1, 2, 1, 2]
    assert results[1].scores == pytest.approx((-2.0, -0.2))


def test_three_stages_replay_equals_run_and_the_last_stage_always_answers():
    small, large = stubs()
    middle = StubMember("middle", {q: ("m", [-0.5] if len(q) % 2 else [-5.0]) for q in QUERIES}, CostModel(3, 0))
    cascade = Cascade([small, middle, large], mean_logprob, thresholds=[-1.0, -1.0])
    results = cascade.run(QUERIES)
    assert middle.asked == ["bbb", "dddd"] and large.asked == ["dddd"]  # "bbb" (odd length) is kept by middle
    assert [r.member for r in results] == ["small", "middle", "small", "large"]
    assert results[3].cost == pytest.approx(8 + 12 + 60)
    everyone = Cascade([small, middle, large], mean_logprob, thresholds=[np.inf, np.inf]).run(QUERIES)
    assert all(r.member == "large" for r in everyone)  # thresholds +inf: every query reaches the last stage
    table = cascade.answer_all(QUERIES)
    assert cascade.replay(table) == results


def test_fit_answers_sets_thresholds_that_route_as_fitted():
    small, large = stubs()
    cascade = Cascade([small, large])
    table = cascade.answer_all(QUERIES)
    correct = [[True, False, True, False], [True, True, True, True]]
    all_small = np.mean([a.cost for a in table[0]])
    fit = cascade.fit_answers(table, correct, budget=1000.0)
    assert fit.accuracy == 1.0 and cascade.thresholds == fit.thresholds
    results = cascade.replay(table)
    assert [r.member for r in results] == ["small", "large", "small", "large"]  # the cheapest way to 100%
    assert np.mean([r.cost for r in results]) == pytest.approx(fit.mean_cost)
    with pytest.raises(ValueError, match=f"at least {all_small:g}"):
        cascade.fit_answers(table, correct, budget=all_small - 1)


# --- two tiny real decoders end to end ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    tok = char_tokenizer(string.printable, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    small = build_model(preset("gpt-tiny", vocab_size=tok.vocab_size, n_layer=1, d_model=16, n_head=2, block_size=32))
    large = build_model(preset("llama-tiny", vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4,
                               block_size=32))
    gen = GenerationConfig(max_new_tokens=5, temperature=0)
    members = [CascadeMember("small", small, tok, CostModel.per_parameter(small), gen, template="Q: {query}\nA:"),
               CascadeMember("large", large, tok, CostModel.per_parameter(large), gen, template="{query} =")]
    return tok, members


TINY_QUERIES = ["1 + 2", "33 - 4", "7 + 70", "9 - 9", "12 + 5", "4 - 40"]


def test_member_answers_match_generate_and_an_unpadded_forward(tiny):
    tok, members = tiny
    for m in members:
        answers = m.answer(TINY_QUERIES, batch_size=4)  # two batches, left-padded prompts of different lengths
        n_params = sum(p.numel() for p in m.model.parameters())
        for q, a in zip(TINY_QUERIES, answers, strict=True):
            prompt = m.template.replace("{query}", q)
            assert a.text == generate_text(m.model, tok, prompt, m.generation)  # groundup's own greedy decoding
            ids = tok.encode(prompt)
            assert a.n_input_tokens == len(ids)
            assert a.cost == n_params * (len(ids) + a.n_output_tokens)  # parameters x tokens, by hand
            new = tok.encode(a.text)  # a random tiny model never emits eos here: every token is in the text
            assert len(new) == a.n_output_tokens == 5
            with torch.no_grad():
                logp = m.model(torch.tensor([ids + new])).float().log_softmax(-1)[0]  # (T, V), no padding
            rows = logp[len(ids) - 1: len(ids) - 1 + len(new)]
            expected = rows.gather(-1, torch.tensor(new)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(a.token_logprobs), expected, atol=1e-4, rtol=0)
            # greedy decoding picked each token as the most likely one
            torch.testing.assert_close(torch.tensor(a.token_logprobs), rows.max(-1).values, atol=1e-4, rtol=0)


def test_cascade_of_two_tiny_decoders_end_to_end(tiny):
    tok, members = tiny
    cascade = groundup.Cascade(members, mean_logprob)
    table = cascade.answer_all(TINY_QUERIES)
    small_scores = [a.mean_logprob for a in table[0]]
    cascade.thresholds = [float(np.median(small_scores))]
    results = cascade.run(TINY_QUERIES, batch_size=4)
    for r, s, small_answer, large_answer in zip(results, small_scores, table[0], table[1], strict=True):
        if s >= cascade.thresholds[0]:
            assert (r.member, r.text, r.cost) == ("small", small_answer.text, small_answer.cost)
        else:
            assert (r.member, r.text) == ("large", large_answer.text)
            assert r.cost == pytest.approx(small_answer.cost + large_answer.cost)
    assert {r.member for r in results} == {"small", "large"}  # the median splits the six queries
    assert results == cascade.replay(table)
    # Fitting with the large model's own answers as references: escalating everything is 100% right, so the
    # fit must reach 100% within a budget that pays for everyone asking both.
    references = [a.text for a in table[1]]
    both = float(np.mean([a.cost + b.cost for a, b in zip(table[0], table[1], strict=True)]))
    fit = cascade.fit(TINY_QUERIES, references, budget=both)
    assert fit.accuracy == 1.0 and fit.mean_cost <= both
    assert sum(exact_match_rate(cascade.run(TINY_QUERIES), references)) == len(TINY_QUERIES)


def exact_match_rate(results, references) -> list[bool]:
    return [r.text.strip() == ref.strip() for r, ref in zip(results, references, strict=True)]


# --- the logistic scorer ------------------------------------------------------------------------------------------
def test_logistic_scorer_separates_confident_from_unsure_answers_per_member():
    rng = np.random.default_rng(0)
    answers, correct = [], []
    for member, cut in (("small", -1.0), ("large", -0.3)):  # each member's own boundary
        for _ in range(40):
            m = float(rng.uniform(-3, 0))
            if abs(m - cut) < 0.2:  # a margin, so the data are separable
                continue
            n = int(rng.integers(1, 5))
            answers.append(Answer(member, "x", tuple([m] * n), 3, 1.0))
            correct.append(m > cut)
    scorer = LogisticScorer.fit(answers, correct)
    predicted = [scorer(a) > 0.5 for a in answers]
    assert predicted == correct
    assert scorer(Answer("small", "x", (-0.5,), 3, 1.0)) > 0.5 > scorer(Answer("large", "x", (-0.5,), 3, 1.0))
    with pytest.raises(ValueError, match="no model for member 'other'"):
        scorer(Answer("other", "x", (-0.5,), 3, 1.0))


# --- bad input ----------------------------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors(tiny):
    tok, members = tiny
    small, large = stubs()
    with pytest.raises(ValueError, match="needs at least two"):
        Cascade([small])
    with pytest.raises(ValueError, match="give exactly 1"):
        Cascade([small, large], thresholds=[0.0, 0.0])
    with pytest.raises(ValueError, match="repeat"):
        Cascade([small, small])
    with pytest.raises(ValueError, match="thresholds are not set"):
        Cascade([small, large]).run(QUERIES)
    cascade = Cascade([small, large])
    with pytest.raises(ValueError, match="4 queries but 3 references"):
        cascade.fit(QUERIES, ["1", "2", "3"], budget=100.0)
    table = cascade.answer_all(QUERIES)
    with pytest.raises(ValueError, match="expected 4 each"):
        cascade.fit_answers(table, [[True] * 4, [True] * 3], budget=100.0)
    with pytest.raises(ValueError, match="budget=0.5 cannot be met.*at least 1"):
        fit_thresholds([SMALL_SCORES], [SMALL_RIGHT, LARGE_RIGHT], COSTS, budget=0.5)
    with pytest.raises(ValueError, match="scores has shape"):
        fit_thresholds([SMALL_SCORES[:5]], [SMALL_RIGHT, LARGE_RIGHT], COSTS, budget=5.0)
    with pytest.raises(ValueError, match="temperature=0"):
        CascadeMember("hot", members[0].model, tok, members[0].cost, GenerationConfig(temperature=0.7))
    with pytest.raises(ValueError, match="'{query}'"):
        CascadeMember("t", members[0].model, tok, members[0].cost, template="Q: {prompt}")
    with pytest.raises(ValueError, match="output_price"):
        CostModel(input_price=1.0, output_price=-1.0)
