"""Alignment (groundup/align): the DPO / IPO losses on hand-computed log-probs, the reference through disabled
adapters equal to a frozen copy's, preference data checked by line, and training that moves what it should: DPO's
implicit-reward accuracy and a reward model's accuracy on separable pairs, through the one training loop."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from serve_helpers import chat_tokenizer, tiny_decoder, tiny_encoder

from groundup import peft as P
from groundup.align import (
    DPOObjective,
    RewardModel,
    bradley_terry_loss,
    dpo_loss,
    pair_logprobs,
    precompute_reference,
    reward_objective,
)
from groundup.align.reward import last_positions
from groundup.data.preference import Preference, PreferenceData, PreferenceFormatError, load_preferences
from groundup.train import TrainConfig, train


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_dpo_and_ipo_losses_by_hand():
    # h = (pi_c - ref_c) - (pi_r - ref_r) = 0.5 - (-0.5) = 1; beta 0.5
    pi_c, pi_r, ref_c, ref_r = t(-1.0), t(-2.0), t(-1.5), t(-1.5)
    loss, r_c, r_r = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5)
    assert math.isclose(float(loss), math.log1p(math.exp(-0.5)), rel_tol=1e-12)
    assert (float(r_c), float(r_r)) == (0.25, -0.25)
    smooth, _, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5, label_smoothing=0.1)
    assert math.isclose(float(smooth), 0.9 * math.log1p(math.exp(-0.5)) + 0.1 * math.log1p(math.exp(0.5)))
    ipo, _, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.25, loss_type="ipo")  # (1 - 1 / 0.5)^2 = 1
    assert math.isclose(float(ipo), 1.0)
    assert math.isclose(float(bradley_terry_loss(t(2.0), t(1.0), t(0.5))), math.log1p(math.exp(-0.5)))


def pairs(n: int = 24) -> list[Preference]:
    good, bad = ["good day", "fine work", "kind words", "warm light"], ["bad day", "poor work", "cruel words"]
    return [Preference(f"say {i % 5}:", good[i % len(good)], bad[i % len(bad)], i + 1) for i in range(n)]


def test_preference_rows_label_the_responses_only():
    tok = chat_tokenizer()
    data = PreferenceData(pairs(2), tok, 64)
    b = data.batch([0])
    for side, text in (("chosen", "good day"), ("rejected", "bad day")):
        labels = b[f"{side}_labels"][0]
        assert tok.decode(labels[labels != -100].tolist()) == text + tok.decode([tok.eos_id])
        n_prompt = len(tok.encode("say 0:"))
        assert b[f"{side}_ids"][0, :n_prompt].tolist() == tok.encode("say 0:")


def test_bad_preference_lines_are_named(tmp_path):
    cases = [({"prompt": "p", "chosen": "a", "rejected": "a"}, "line 2: 'chosen' equals 'rejected'"),
             ({"prompt": "p", "chosen": "a"}, "line 2: 'rejected' must be a non-empty string"),
             ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": -1}, "line 2: 'margin' must be")]
    for record, message in cases:
        path = tmp_path / "p.jsonl"
        path.write_text(json.dumps({"prompt": "", "chosen": "x", "rejected": "y"}) + "\n" + json.dumps(record) + "\n")
        with pytest.raises(PreferenceFormatError, match=message):
            load_preferences(path)
    with pytest.raises(PreferenceFormatError, match="line 7: prompt \\+ response take"):
        PreferenceData([Preference("word " * 80, "a", "b", 7)], chat_tokenizer(), 32)


def lora_policy(tok):
    model = P.inject(tiny_decoder(tok.vocab_size), P.LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in P.trainable_parameters(model).values():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def test_the_reference_through_disabled_adapters_is_the_frozen_base_exactly():
    tok = chat_tokenizer()
    base = tiny_decoder(tok.vocab_size)
    policy = lora_policy(tok)
    data = PreferenceData(pairs(6), tok, 64)
    precompute_reference(copy.deepcopy(base), data)
    batch = data.batch(list(range(6)), with_reference=False)
    with torch.no_grad(), P.disable(policy):
        ref_c, ref_r = pair_logprobs(policy, batch)
    torch.testing.assert_close(torch.stack([ref_c, ref_r], -1), data.reference, rtol=0, atol=0)
    with torch.no_grad():
        pi_c, _ = pair_logprobs(policy, batch)
    assert not torch.allclose(pi_c, ref_c)  # the adapters do change the policy


@pytest.mark.parametrize("precomputed", [False, True])
def test_dpo_training_raises_the_implicit_reward_accuracy(tmp_path, precomputed):
    tok = chat_tokenizer()
    policy = P.inject(tiny_decoder(tok.vocab_size), P.LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    data = PreferenceData(pairs(), tok, 64)
    if precomputed:
        precompute_reference(tiny_decoder(tok.vocab_size), data)
    objective = DPOObjective(beta=0.5)
    every = data.batch(list(range(len(data.rows))))
    with torch.no_grad():
        _, before = objective(policy, every)
    assert float(before["reward_margin"]) == pytest.approx(0.0, abs=1e-5)  # a fresh adapter is the reference
    train(policy, objective, data, TrainConfig(out_dir=str(tmp_path), max_steps=40, batch_size=8, lr=1e-2,
                                               warmup_steps=1, eval_every=0, ckpt_every=0, progress=False))
    with torch.no_grad():
        _, after = objective(policy, every)
    assert float(after["reward_accuracy"]) == 1.0 and float(after["reward_margin"]) > 0.5


@pytest.mark.parametrize("trunk", ["decoder", "encoder"])
def test_a_reward_model_separates_separable_pairs(tmp_path, trunk):
    if trunk == "decoder":
        tok = chat_tokenizer()
        torch.manual_seed(0)
        model = RewardModel(tiny_decoder(tok.vocab_size))
    else:  # BERT-style: read both ways, the padding masked, [SEP] ends a response
        encoder, tok = tiny_encoder()
        model = RewardModel(encoder)
    data = PreferenceData(pairs(), tok, 64)
    every = data.batch(list(range(len(data.rows))))
    objective = reward_objective()
    train(model, objective, data, TrainConfig(out_dir=str(tmp_path), max_steps=40, batch_size=8, lr=3e-3,
                                              warmup_steps=1, eval_every=0, ckpt_every=0, progress=False))
    with torch.no_grad():
        _, metrics = objective(model, every)
        last = last_positions(every["chosen_labels"])
        padded = torch.nn.functional.pad(every["chosen_ids"], (0, 7), value=data.pad_id)
        torch.testing.assert_close(model(padded, last), model(every["chosen_ids"], last))  # padding is never read
    assert float(metrics["accuracy"]) == 1.0


def test_kl_estimators_whitening_and_group_advantages_by_hand():
    from groundup.align.rl import AdaptiveKL, group_advantages, kl_per_token, whiten

    logp, ref = t(math.log(0.5), math.log(0.2)), t(math.log(0.25), math.log(0.4))
    torch.testing.assert_close(kl_per_token(logp, ref, "k1"), t(math.log(2), math.log(0.5)))
    # k3 = (r - 1) - log r with r = ref / pi: 0.5 and 2
    torch.testing.assert_close(kl_per_token(logp, ref, "k3"), t(-0.5 - math.log(0.5), 1 - math.log(2)))
    x = t(1.0, 2.0, 3.0, 100.0)
    w = whiten(x, t(1, 1, 1, 0))  # the masked-out 100 takes no part: mean 2, variance 2/3
    torch.testing.assert_close(w[:3], t(-1.0, 0.0, 1.0) / math.sqrt(2 / 3 + 1e-8))
    adv = group_advantages(t(1.0, 0.0, 1.0, 0.0, 0.0, 0.0), 3)  # groups (1, 0, 1) and (0, 0, 0)
    s = math.sqrt(1 / 3)  # the sample std of (1, 0, 1)
    torch.testing.assert_close(adv, t(1 / 3 / (s + 1e-4), -2 / 3 / (s + 1e-4), 1 / 3 / (s + 1e-4), 0, 0, 0))
    kl = AdaptiveKL(init=0.1, target=1.0, horizon=10)
    assert math.isclose(kl.update(3.0, 5), 0.1 * (1 + 0.2 * 0.5))  # the error is clipped at 0.2


def test_gae_by_hand():
    from groundup.align.rl import gae

    # one row, three response tokens, reward only at the end; gamma 0.9, lambda 0.5
    rewards, values, mask = t(0, 0, 1.0)[None], t(0.5, 0.2, 0.4)[None], t(1, 1, 1)[None]
    d2 = 1.0 - 0.4                     # the episode ends after t = 2
    d1 = 0.0 + 0.9 * 0.4 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2 = d2
    a1 = d1 + 0.9 * 0.5 * a2
    a0 = d0 + 0.9 * 0.5 * a1
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, t(a0, a1, a2)[None])
    torch.testing.assert_close(ret, t(a0 + 0.5, a1 + 0.2, a2 + 0.4)[None])
    # left and right of the response (prompt, padding) stay 0
    adv, _ = gae(t(0, 0, 1.0, 0)[None], t(9, 0.2, 0.4, 9)[None], t(0, 1, 1, 0)[None], 0.9, 0.5)
    assert adv[0, 0] == 0 and adv[0, 3] == 0


def test_grpo_raises_a_rule_based_reward(tmp_path):
    from groundup.align.grpo import GroupRollouts, GRPOConfig, grpo_objective
    from groundup.generate import GenerationConfig, generate

    tok = chat_tokenizer()
    policy = tiny_decoder(tok.vocab_size)
    reference = copy.deepcopy(policy).eval()
    reward = lambda text, _: text.count("e") / max(1, len(text))  # noqa: E731  (write e's)
    prompts = [(f"Line {i}:", "") for i in range(8)]
    cfg = GRPOConfig(group_size=8, max_new_tokens=6, temperature=1.0, kl_coef=0.01)

    def mean_reward() -> float:
        rows = generate(policy, [tok.encode(p) for p, _ in prompts] * 8, GenerationConfig(max_new_tokens=6, seed=0,
                                                                                         temperature=1.0))
        return sum(reward(tok.decode(r), "") for r in rows) / len(rows)

    before = mean_reward()
    data = GroupRollouts(policy, tok, prompts, reward, cfg, reference)
    result = train(policy, grpo_objective(cfg.kl_coef, cfg.clip), data, TrainConfig(
        out_dir=str(tmp_path), max_steps=40, batch_size=32, lr=1e-2, warmup_steps=1, eval_every=0, ckpt_every=0,
        progress=False))
    after = mean_reward()
    assert after > before + 0.15, (before, after)  # 0.04 -> 0.31 here
    assert result.losses and all(math.isfinite(x) for x in result.losses)


def test_ppo_raises_a_rule_based_reward_with_the_kl_under_its_target(tmp_path):
    from groundup.align.ppo import ActorCritic, PPOConfig, PPORollouts, ppo_objective
    from groundup.generate import GenerationConfig, generate

    tok = chat_tokenizer()
    policy = tiny_decoder(tok.vocab_size)
    reference = copy.deepcopy(policy).eval()
    model = ActorCritic(policy)
    reward = lambda _, texts: torch.tensor([x.count("e") / max(1, len(x)) for x in texts])  # noqa: E731
    prompts = [f"Line {i}:" for i in range(8)]
    cfg = PPOConfig(rollout_size=64, epochs=4, max_new_tokens=6, kl_coef=0.05, kl_target=2.0, kl_horizon=1000,
                    eos_penalty=0.0)

    def mean_reward() -> float:
        rows = generate(policy, [tok.encode(p) for p in prompts] * 8, GenerationConfig(max_new_tokens=6, seed=0,
                                                                                      temperature=1.0))
        return float(reward(None, [tok.decode(r) for r in rows]).mean())

    before = mean_reward()
    data = PPORollouts(model, tok, prompts, reward, cfg, reference)
    train(model, ppo_objective(cfg.clip, cfg.clip_value, cfg.vf_coef), data, TrainConfig(
        out_dir=str(tmp_path), max_steps=160, batch_size=16, lr=1e-2, warmup_steps=1, eval_every=0, ckpt_every=0,
        progress=False))
    after = mean_reward()
    assert after > before + 0.03, (before, after)  # 0.044 -> 0.089 here
    assert len(data.stats) == 10 and all(s["kl"] < cfg.kl_target for s in data.stats)


def test_human_ratings_make_disjoint_preference_pairs():
    from groundup.data.ratings import human_ratings, rating_pairs, split_ratings

    movie = human_ratings("movie")
    assert len(movie) > 10_000 and all(-4 <= r <= 4 for r, _ in movie)
    assert (2.26666666667, movie[0][1]) == (movie[0][0], movie[0][1]) and movie[0][1].startswith("The Rock is destined")
    train, test = split_ratings(movie, 0.2)
    assert not {s for _, s in train} & {s for _, s in test}
    rated = dict((s, r) for r, s in movie)
    pairs = rating_pairs(train, 50, min_margin=2.0)
    assert all(rated[p.chosen] - rated[p.rejected] >= 2.0 and p.margin == pytest.approx(
        rated[p.chosen] - rated[p.rejected]) for p in pairs)


def ppo_run(tmp_path, crash_after: int | None = None, resume: bool = False):
    """A PPO run of 10 steps on the tiny model (rollouts of 16, 2 epochs x minibatches of 8: 4 steps a rollout),
    killed when it draws batch crash_after + 1, like a preempted job."""
    from groundup.align.ppo import ActorCritic, PPOConfig, PPORollouts, ppo_objective

    class Preempted(PPORollouts):
        calls = 0

        def get_batch(self, *args):
            self.calls += 1
            if crash_after is not None and self.calls > crash_after:
                raise KeyboardInterrupt("simulated crash")
            return super().get_batch(*args)

    tok = chat_tokenizer()
    policy = tiny_decoder(tok.vocab_size)
    reference = copy.deepcopy(policy).eval()
    model = ActorCritic(policy)
    reward = lambda _, texts: torch.tensor([x.count("e") / max(1, len(x)) for x in texts])  # noqa: E731
    cfg = PPOConfig(rollout_size=16, epochs=2, max_new_tokens=5, kl_coef=0.05, kl_target=1.0, kl_horizon=100)
    data = Preempted(model, tok, [f"Line {i}:" for i in range(4)], reward, cfg, reference)
    result = train(model, ppo_objective(), data, TrainConfig(
        out_dir=str(tmp_path), max_steps=10, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=0, ckpt_every=3,
        log_every=1, progress=False, resume=resume))
    return result, model, data


def test_an_interrupted_ppo_run_resumes_exactly_mid_rollout(tmp_path):
    full, model, data = ppo_run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):  # killed in step 4: the checkpoint of step 3 is inside the first rollout
        ppo_run(tmp_path / "cut", crash_after=3)
    resumed, again, data_again = ppo_run(tmp_path / "cut", resume=True)
    assert resumed.losses == full.losses  # the rollout in progress, its order and the KL coefficient came back
    assert [s["kl_coef"] for s in data_again.stats] == [s["kl_coef"] for s in data.stats]
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_the_loop_logs_an_objective_s_own_metrics_as_means_since_the_last_row(tmp_path):
    from groundup.train.metrics import read_metrics

    tok = chat_tokenizer()
    objective = reward_objective()
    seen = []

    def counting(model, batch):  # the reward objective, with a metric whose means we know: 1, 2, 3, ...
        loss, metrics = objective(model, batch)
        seen.append(float(metrics["accuracy"]))
        return loss, {**metrics, "count": torch.tensor(float(len(seen)))}

    counting.logged = ("accuracy", "count")
    train(RewardModel(tiny_decoder(tok.vocab_size)), counting, PreferenceData(pairs(), tok, 64), TrainConfig(
        out_dir=str(tmp_path), max_steps=6, batch_size=8, grad_accum=2, warmup_steps=1, eval_every=0, ckpt_every=0,
        log_every=3, progress=False))
    rows = read_metrics(tmp_path / "metrics.csv")
    # two micro-steps a step: the count of steps 1-3 is mean(1..6) = 3.5, of steps 4-6 mean(7..12) = 9.5
    assert [(r["step"], r["count"]) for r in rows] == [(3, 3.5), (6, 9.5)]
    assert [r["accuracy"] for r in rows] == pytest.approx([sum(seen[:6]) / 6, sum(seen[6:]) / 6])
    assert (tmp_path / "loss.png").is_file()


def test_a_saved_reward_model_scores_as_it_did_and_joins_unprompted_text(tmp_path):
    from groundup.align.reward import RewardScorer, load_reward_model, save_reward_model
    from groundup.train import save_checkpoint

    tok = chat_tokenizer()
    torch.manual_seed(1)
    model = RewardModel(P.inject(tiny_decoder(tok.vocab_size), P.LoraConfig(r=4, target_modules=["q_proj"])))
    with torch.no_grad():
        for p in P.trainable_parameters(model.trunk).values():
            p.normal_(0, 0.3)
    before = RewardScorer(model, tok, prompted=False)(["good ", "bad"], ["day", " words"])
    save_checkpoint(tmp_path / "unused", tiny_decoder(tok.vocab_size), tokenizer=tok)  # a folder without a head
    with pytest.raises(FileNotFoundError, match="not a reward model folder"):
        load_reward_model(tmp_path / "unused")
    save_reward_model(model, tok, tmp_path / "rm", prompted=False)
    loaded, tok2, prompted = load_reward_model(tmp_path / "rm")
    scorer = RewardScorer(loaded, tok2, prompted)
    torch.testing.assert_close(scorer(["good ", "bad"], ["day", " words"]), before, rtol=1e-5, atol=1e-5)
    # unprompted: the prompt and the response are one text, read at its last token
    ids = [tok.bos_id if tok.bos_id is not None else tok.eos_id] + tok.encode("good day")
    direct = loaded(torch.tensor([ids]), torch.tensor([len(ids) - 1]))
    torch.testing.assert_close(scorer(["good "], ["day"]), direct, rtol=1e-5, atol=1e-5)


def test_token_logprobs_read_the_head_at_labelled_positions_only_and_agree_with_full_logits():
    from groundup.align.logprobs import token_logprobs

    tok = chat_tokenizer()
    batch = PreferenceData(pairs(4), tok, 64).batch([0, 1, 2, 3])
    ids, labels = batch["chosen_ids"], batch["chosen_labels"]
    for model in (lora_policy(tok), P.inject(tiny_decoder(tok.vocab_size), P.PromptTuningConfig(4))):  # a wrapper
        with torch.no_grad():
            full = torch.log_softmax(model(ids).float(), -1).gather(-1, labels.clamp(min=0)[..., None])  # (B, T, 1)
            expected = full.squeeze(-1) * (labels != -100)
            torch.testing.assert_close(token_logprobs(model, ids, labels), expected, rtol=1e-5, atol=1e-5)
