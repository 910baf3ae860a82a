"""Mixture of experts (groundup/nn/moe.py): routing and capacity on hand-checked cases, the router losses by
hand, gradients, the decoder's invariants with MoE blocks, the training objective, and config checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from groundup.config import ConfigError, ModelConfig, preset
from groundup.data import LMData
from groundup.models.decoder import DecoderLM
from groundup.nn import MoE, Router, moe_aux_loss
from groundup.nn.moe import capacity_for, load_balancing_loss, router_z_loss
from groundup.train import TrainConfig, train
from groundup.train.objectives import causal_lm, count_targets


def moe_cfg(**overrides) -> ModelConfig:
    fields = dict(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_kv_head=1, d_model=16, d_ff=24, n_expert=4,
                  n_expert_per_token=2, router_aux_loss_coef=0.0, router_z_loss_coef=0.0)
    return preset("mixtral-tiny", **{**fields, **overrides})


def logit_moe(n_expert: int, k: int, **overrides) -> MoE:
    """An MoE whose router logits are the first n_expert features of its input (gate = [I | 0])."""
    torch.manual_seed(0)
    moe = MoE(moe_cfg(d_model=8, n_expert=n_expert, n_expert_per_token=k, **overrides))
    with torch.no_grad():
        moe.gate.weight.copy_(torch.eye(n_expert, 8))
    return moe


def with_logits(logits: torch.Tensor, d_model: int = 8) -> torch.Tensor:
    x = torch.randn(logits.shape[0], d_model, generator=torch.Generator().manual_seed(1))
    x[:, : logits.shape[1]] = logits
    return x


# Softmax of log(p) is p exactly when p sums to 1: each row's probabilities are written down directly.
PROBS = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4], [0.05, 0.6, 0.05, 0.3]])


def test_top2_routing_renormalises_like_mixtral():
    r = Router(4, 2)(PROBS.log())
    assert r.experts.tolist() == [[0, 1], [3, 2], [1, 3]]
    assert_close(r.weights, torch.tensor([[0.5 / 0.8, 0.3 / 0.8], [0.4 / 0.7, 0.3 / 0.7], [0.6 / 0.9, 0.3 / 0.9]]))
    assert r.kept.all() and r.capacity is None
    assert_close(r.probs, PROBS)


def test_top1_routing_switch_and_mixtral_weights():
    switch = Router(4, 1, norm_topk=False)(PROBS.log())  # Switch: the gate value is the raw probability
    assert switch.experts.flatten().tolist() == [0, 3, 1]
    assert_close(switch.weights.flatten(), torch.tensor([0.5, 0.4, 0.6]))
    mixtral = Router(4, 1, norm_topk=True)(PROBS.log())  # renormalising a single choice gives 1
    assert_close(mixtral.weights.flatten(), torch.ones(3))


def test_capacity_formula():
    assert capacity_for(10, 2, 4, 1.25) == math.ceil(1.25 * 10 * 2 / 4) == 7
    assert capacity_for(3, 1, 3, 1.0) == 1
    assert capacity_for(10, 2, 4, None) is None and capacity_for(10, 2, 4, 0.0) is None


def test_capacity_drops_the_later_tokens():
    """3 tokens all prefer expert 0, capacity 1 (cf=1, 3 tokens, k=1, 3 experts): the first token keeps the
    slot even though token 1 wants expert 0 most. Tokens are served in order so that a token's fate depends
    only on earlier tokens (a causal LM stays causal); the two dropped tokens' MoE output is exactly 0."""
    probs = torch.tensor([[0.4, 0.3, 0.3], [0.9, 0.05, 0.05], [0.6, 0.2, 0.2]])
    moe = logit_moe(3, 1, expert_capacity_factor=1.0)
    x = with_logits(probs.log())
    y = moe(x)
    assert moe.router(probs.log()).kept.flatten().tolist() == [True, False, False]
    assert int(moe.last_dropped) == 2 and moe.last_load.tolist() == [1, 0, 0]
    assert_close(y[1:], torch.zeros(2, 8))
    assert_close(y[0], moe.experts[0](x[0]) * 1.0)  # renormalised top-1 weight is 1


def test_capacity_top2_serves_each_token_best_choice_first():
    """Capacity 1 per expert (cf=0.5, 2 tokens, k=2, 2 experts: ceil(0.5*2*2/2) = 1). Token 0
    takes both experts' only slots, token 1 is dropped from both; token 0's output is its full top-2 mixture."""
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    moe = logit_moe(2, 2, expert_capacity_factor=0.5)
    x = with_logits(probs.log())
    y = moe(x)
    assert int(moe.last_dropped) == 2 and moe.last_load.tolist() == [1, 1]
    assert_close(y[0], 0.7 * moe.experts[0](x[0]) + 0.3 * moe.experts[1](x[0]))
    assert_close(y[1], torch.zeros(8))


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, straight from the definition: sum over the top-k experts of weight * expert(x)."""
    out = []
    for row in x:
        probs = torch.softmax(moe.gate(row), -1)
        top, idx = probs.topk(moe.k)
        top = top / top.sum()
        out.append(sum(w * moe.experts[int(e)](row) for w, e in zip(top, idx, strict=True)))
    return torch.stack(out)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_vectorised_moe_equals_the_per_token_definition(k):
    torch.manual_seed(0)
    moe = MoE(moe_cfg(n_expert=4, n_expert_per_token=k))
    x = torch.randn(2, 7, 16)
    y = moe(x)
    assert y.shape == x.shape and int(moe.last_dropped) == 0 and int(moe.last_load.sum()) == 14 * k
    assert_close(y.reshape(-1, 16), reference_moe(moe, x.reshape(-1, 16)), atol=1e-6, rtol=1e-5)


def test_one_expert_is_the_dense_mlp():
    torch.manual_seed(0)
    moe = MoE(moe_cfg(n_expert=1, n_expert_per_token=1))
    x = torch.randn(3, 5, 16)
    assert_close(moe(x), moe.experts[0](x))


def test_load_balancing_loss_by_hand():
    """Switch: E * sum_i f_i P_i. Each token on its own expert with p=0.7 (0.1 elsewhere): f_i = 1/4, P_i = 1/4,
    loss = 4 * 4 * (1/16) = 1. All four tokens on expert 0: f = (1,0,0,0), P_0 = 0.7, loss = 4 * 0.7 = 2.8."""
    uniform = torch.full((4, 4), 0.1) + 0.6 * torch.eye(4)
    moe = logit_moe(4, 1, router_aux_loss_coef=0.01)
    moe(with_logits(uniform.log()))
    assert_close(moe.last_losses["load_balancing"], torch.tensor(1.0))
    assert_close(moe.aux_loss(), torch.tensor(0.01))
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 4)
    assert_close(load_balancing_loss(skewed, skewed.argmax(-1, keepdim=True)), torch.tensor(2.8))


def test_load_balancing_counts_every_choice_of_top_k():
    """k=2, one token, probs (0.5, 0.3, 0.2): f = (1/2, 1/2, 0), loss = 3 * (0.5*0.5 + 0.5*0.3) = 1.2."""
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    assert_close(load_balancing_loss(probs, torch.tensor([[0, 1]])), torch.tensor(1.2))


def test_z_loss_by_hand():
    """logsumexp(0, 0) = log 2; logsumexp(log 3, 0) = log 4 = 2 log 2: mean of squares = 2.5 (log 2)^2."""
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert_close(router_z_loss(logits), torch.tensor(2.5 * math.log(2.0) ** 2))
    moe = logit_moe(2, 1, router_z_loss_coef=0.1)
    moe(with_logits(logits))
    assert_close(moe.aux_loss(), torch.tensor(0.1 * 2.5 * math.log(2.0) ** 2))


def moe_model(**overrides) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(moe_cfg(**overrides))


def test_gradients_reach_router_and_every_expert():
    model = moe_model(router_aux_loss_coef=0.01, router_z_loss_coef=0.001).train()
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(0))
    loss, metrics = causal_lm(model, {"input_ids": ids, "labels": ids.roll(-1, 1)})
    loss.backward()
    for block in model.blocks:
        assert block.mlp.gate.weight.grad.abs().sum() > 0
        for expert in block.mlp.experts:  # an expert that got no token still gets a (zero) gradient
            assert all(p.grad is not None for p in expert.parameters())
        assert sum(float(e.down_proj.weight.grad.abs().sum()) for e in block.mlp.experts) > 0
    assert_close(metrics["loss"], metrics["lm_loss"] + metrics["router_aux_loss"])


def test_renormalised_top1_router_learns_only_from_the_aux_losses():
    """Why router_norm_topk=False exists: with k=1 Mixtral's renormalised weight is p/p = 1, so the LM loss
    gives the router no gradient; Switch's raw probability does."""
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = {}
    for norm in (True, False):
        model = moe_model(n_expert_per_token=1, router_norm_topk=norm)
        model(ids).logsumexp(-1).mean().backward()
        grads[norm] = model.blocks[0].mlp.gate.weight.grad.abs().sum()
    assert grads[False] > 0 and grads[True] < 1e-6 * grads[False]  # zero up to rounding of p / p


@pytest.mark.parametrize("k", [1, 2])
def test_kv_cache_decode_equals_full_forward(k):
    model = moe_model(n_expert_per_token=k).eval()
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(0))
    full = model(ids)
    cache = model.new_cache(2, 12)
    pieces = [model(ids[:, :5], cache=cache)]
    pieces += [model(ids[:, t : t + 1], cache=cache, start=t) for t in range(5, 9)]
    pieces.append(model(ids[:, 9:], cache=cache, start=9))
    assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


def test_token_dropping_stays_causal():
    """With a tight capacity (tokens are dropped), changing token 6 leaves the logits of tokens 0..5 unchanged."""
    model = moe_model(n_expert_per_token=1, expert_capacity_factor=0.5).eval()
    ids = torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % 40
    a = model(ids)
    assert sum(int(b.mlp.last_dropped) for b in model.blocks) > 0
    b = model(changed)
    assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_state_dict_names():
    """Keys are API: Mixtral's layout, experts hold the ordinary gated MLP's linears."""
    keys = set(moe_model().state_dict())
    assert {"blocks.0.mlp.gate.weight", "blocks.1.mlp.experts.3.gate_proj.weight",
            "blocks.1.mlp.experts.3.up_proj.weight", "blocks.1.mlp.experts.3.down_proj.weight"} <= keys
    assert not any(k.startswith("blocks.0.mlp.router") for k in keys)  # the Router holds no parameters


def test_aux_loss_is_summed_over_layers_and_absent_for_dense_models():
    model = moe_model(router_aux_loss_coef=0.01, router_z_loss_coef=0.001)
    assert model.aux_loss() is None  # nothing before the first forward
    model(torch.randint(0, 40, (2, 8)))
    per_layer = [b.mlp.aux_loss() for b in model.blocks]
    assert_close(model.aux_loss(), per_layer[0] + per_layer[1])
    dense = DecoderLM(moe_cfg(n_expert=0))
    dense(torch.randint(0, 40, (2, 8)))
    assert dense.aux_loss() is None and moe_aux_loss(dense) is None


def test_objective_adds_the_aux_loss_in_training_only_and_as_a_share():
    model = moe_model(router_aux_loss_coef=0.5)
    ids = torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.roll(-1, 1)}
    model.eval()
    val, val_metrics = causal_lm(model, batch)
    assert set(val_metrics) == {"loss"}  # validation loss is the pure LM loss
    model.train()
    loss, metrics = causal_lm(model, batch)
    assert_close(loss, val + model.aux_loss())
    half = {k: v[:2] for k, v in batch.items()}  # a micro-batch holding half of the global batch's targets
    share, _ = causal_lm(model, half, counts=count_targets(batch))
    plain, _ = causal_lm(model, half)
    aux = model.aux_loss()
    assert_close(share, (plain - aux) / 2 + aux / 2)


def test_training_loop_runs_an_moe_model(tmp_path):
    stream = torch.randint(0, 40, (400,), generator=torch.Generator().manual_seed(0)).numpy()
    data = LMData({"train": stream[:300], "val": stream[300:]}, block_size=16)
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=4, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=4,
                      eval_batches=1, dtype="fp32", progress=False, log_every=2)
    result = train(moe_model(router_aux_loss_coef=0.01, expert_capacity_factor=1.0), "causal_lm", data, cfg)
    assert result.step == 4 and math.isfinite(result.val_loss) and all(math.isfinite(x) for x in result.losses)


@pytest.mark.parametrize("bad, field", [
    (dict(n_expert=-1), "n_expert"),
    (dict(n_expert=2.5), "n_expert"),
    (dict(n_expert=4, n_expert_per_token=0), "n_expert_per_token"),
    (dict(n_expert=4, n_expert_per_token=5), "n_expert_per_token"),
    (dict(n_expert=4, expert_capacity_factor=-1.0), "expert_capacity_factor"),
    (dict(n_expert=4, router_aux_loss_coef=-0.1), "router_aux_loss_coef"),
    (dict(n_expert=4, router_z_loss_coef="big"), "router_z_loss_coef"),
    (dict(n_expert=4, arch="encoder"), "n_expert"),
])
def test_bad_moe_config_names_the_field(bad, field):
    with pytest.raises(ConfigError, match=rf"ModelConfig\.{field}="):
        ModelConfig(**bad)


def test_moe_fields_round_trip_through_a_saved_config(tmp_path):
    cfg = moe_cfg(expert_capacity_factor=1.25, router_norm_topk=False)
    cfg.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == cfg
