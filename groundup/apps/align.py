"""`groundup align reward|dpo|ppo|grpo`: a model (LoRA or all weights) + data -> one alignment objective in the
one training loop -> a saved result, with held-out numbers.

    reward  preference pairs ─> RewardModel (trunk + scalar head) ─> out_dir/reward_model/
    dpo     preference pairs (+ the reference's log-probs, precomputed) ─> out_dir/adapter/ (or model/)
    ppo     prompts + a reward model ─> PPORollouts ─> out_dir/adapter/ (or model/)
    grpo    instruction JSONL (exact match is the reward) ─> GroupRollouts ─> out_dir/adapter/ (or model/)

The reference of a LoRA policy is the same model with its adapters disabled; of a full fine-tune, its log-probs
taken before training (DPO) or a frozen copy (PPO, GRPO). Resume (--train.resume) rebuilds the same model and
continues ckpt/ exactly (PPO's rollout in progress and KL coefficient included).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn

from ..align import (
    ActorCritic,
    DPOObjective,
    GroupRollouts,
    GRPOConfig,
    PPOConfig,
    PPORollouts,
    RewardModel,
    grpo_objective,
    ppo_objective,
    precompute_reference,
    reward_objective,
)
from ..align.evaluate import pair_metrics
from ..align.reward import RewardScorer, load_reward_model, save_reward_model
from ..data.arithmetic import exact_match
from ..data.preference import PreferenceData, PreferenceFormatError, end_id, load_preferences, load_prompts
from ..data.prompt_format import PromptFormat
from ..finetune import (
    PeftOptions,
    eval_pairs,
    evaluate_exact_match,
    prepare_model,
    run_record,
    save_finetuned,
    write_run_record,
)
from ..jobs.align import AlignJob, DPOJob, GRPOJob, PPOJob, RewardJob
from ..loading import load_pretrained
from ..peft import summary
from ..tokenizer import Tokenizer
from ..train import TrainConfig, TrainResult, train
from .by_arch import require_arch

RECORD = "align_job.json"


def _say(msg: str) -> None:
    print(f"[groundup.align] {msg}", flush=True)


def _config(job: AlignJob) -> TrainConfig:
    if job.train.out_dir not in (TrainConfig().out_dir, job.out_dir):
        raise ValueError(f"train.out_dir={job.train.out_dir!r}: an alignment run writes to out_dir; set --out_dir")
    return dataclasses.replace(job.train, out_dir=job.out_dir)


def _record(job: AlignJob, command: str, cfg: TrainConfig) -> dict | None:
    mine = {"command": command, "model": job.model, "method": job.method, "lora": dataclasses.asdict(job.lora)}
    return run_record(job.out_dir, mine, cfg.resume, RECORD, "--model/--method/--lora")


def _load(job: AlignJob, command: str) -> tuple[nn.Module, Tokenizer]:
    model, tok = load_pretrained(job.model)
    require_arch(model, f"align {command}", ("decoder", "encoder") if command == "reward" else ("decoder",))
    if tok is None or end_id(tok) is None:
        raise ValueError(f"model {job.model!r} has no tokenizer with an eos (or [SEP]) token; alignment needs one to "
                         "end responses (save the tokenizer with the checkpoint)")
    return model, tok


def _prepare(job: AlignJob, model: nn.Module, tok: Tokenizer, cfg: TrainConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)  # the adapter's start is part of the run
    lora = job.lora
    opts = PeftOptions(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    return prepare_model(model, job.method, opts, tok)


def _need(value: str, flag: str, what: str) -> None:
    if not value:
        raise ValueError(f"--{flag} is missing; give {what}")


def _pairs(path: str, flag: str, tok: Tokenizer, model: nn.Module, seed: int) -> PreferenceData:
    try:
        return PreferenceData(load_preferences(path), tok, model.config.block_size, 0.0, seed)
    except (PreferenceFormatError, FileNotFoundError) as e:  # it names the line; say which flag and file
        raise type(e)(f"--{flag}={path}: {e}") from None


def _check_prompts(prompts: list[tuple[int, str]], tok: Tokenizer, model: nn.Module, max_new_tokens: int,
                   source: str) -> None:
    room = model.config.block_size - max_new_tokens
    for line, prompt in prompts:
        n = len(tok.encode(prompt))
        if n > room:
            raise ValueError(f"{source} line {line}: the prompt takes {n} tokens, and with max_new_tokens="
                             f"{max_new_tokens} the context ({model.config.block_size}) holds {room}; shorten it")


def _finish(result: TrainResult, model: nn.Module, tok: Tokenizer, job: AlignJob,
            prompt_format: PromptFormat | None = None) -> dict[str, Path]:
    saved = save_finetuned(model, tok, job.method, job.out_dir, prompt_format)
    _say(f"step {result.step}, last loss {result.train_loss:.4f}; wrote " + ", ".join(map(str, saved.values()))
         + f"; metrics {result.metrics_csv}, plots {result.loss_png}")
    return saved


def align_reward(job: RewardJob) -> dict:
    _need(job.data, "data", "a preference JSONL, e.g. --data data/preferences/train.jsonl")
    cfg = _config(job)
    record = _record(job, "reward", cfg)
    trunk, tok = _load(job, "reward")
    data = _pairs(job.data, "data", tok, trunk, cfg.seed)
    held_out = _pairs(job.eval_data, "eval_data", tok, trunk, cfg.seed) if job.eval_data else None
    model = RewardModel(_prepare(job, trunk, tok, cfg))  # the head after the adapters: it trains in either method
    _say(f"{len(data.rows)} pairs; method={job.method} {summary(model.trunk)}")
    write_run_record(job.out_dir, record, RECORD)
    objective = reward_objective(job.center, job.margin)
    result = train(model, objective, data, cfg, tokenizer=tok)
    out = {"result": result, "model": model, "tokenizer": tok}
    if held_out is not None:
        out["accuracy"] = pair_metrics(objective, model, held_out)["accuracy"]
        _say(f"accuracy on {job.eval_data}: {out['accuracy']:.3f} ({len(held_out.rows)} pairs)")
    out["reward_model"] = save_reward_model(model, tok, Path(job.out_dir) / "reward_model", data.prompted)
    _say(f"wrote {out['reward_model']}; metrics {result.metrics_csv}, plots {result.loss_png}")
    return out


def align_dpo(job: DPOJob) -> dict:
    _need(job.data, "data", "a preference JSONL, e.g. --data data/preferences/train.jsonl")
    if job.method == "full" and not job.precompute_reference:
        raise ValueError("--precompute_reference=false needs the reference as disabled adapters, so --method lora; "
                         "a full fine-tune's reference is its log-probs taken before training")
    objective = DPOObjective(job.beta, job.loss, job.label_smoothing)
    cfg = _config(job)
    record = _record(job, "dpo", cfg)
    model, tok = _load(job, "dpo")
    data = _pairs(job.data, "data", tok, model, cfg.seed)
    held_out = _pairs(job.eval_data, "eval_data", tok, model, cfg.seed) if job.eval_data else None
    model = _prepare(job, model, tok, cfg)
    for pairs in (data, held_out) if job.precompute_reference else ():  # before any update: the reference itself
        if pairs is not None:
            precompute_reference(model, pairs, average=job.loss == "ipo")
    _say(f"{len(data.rows)} pairs; method={job.method} {summary(model)}; beta={job.beta} loss={job.loss}")
    write_run_record(job.out_dir, record, RECORD)
    result = train(model, objective, data, cfg, tokenizer=tok)
    out = {"result": result, "model": model, "tokenizer": tok, **_finish(result, model, tok, job)}
    if held_out is not None:
        out.update(pair_metrics(objective, model, held_out))
        _say(f"implicit-reward accuracy on {job.eval_data}: {out['reward_accuracy']:.3f}, margin "
             f"{out['reward_margin']:.3f} ({len(held_out.rows)} pairs)")
    return out


def _same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    return a.eos_id == b.eos_id and a.backend.get_vocab() == b.backend.get_vocab()


def align_ppo(job: PPOJob) -> dict:
    _need(job.prompts, "prompts", 'a JSONL of {"prompt": ...} lines, e.g. --prompts data/preferences/prompts.jsonl')
    _need(job.reward_model, "reward_model", "the reward_model/ folder of `groundup align reward`")
    cfg = _config(job)
    if job.rollout_size % cfg.batch_size:
        raise ValueError(f"rollout_size={job.rollout_size} must be a multiple of train.batch_size={cfg.batch_size}")
    record = _record(job, "ppo", cfg)
    prompts = load_prompts(job.prompts)
    rm, rm_tok, prompted = load_reward_model(job.reward_model)
    policy, tok = _load(job, "ppo")
    if not _same_tokenizer(tok, rm_tok):
        raise ValueError(f"--reward_model {job.reward_model} has another tokenizer than --model {job.model} "
                         f"(vocabularies of {rm_tok.vocab_size} and {tok.vocab_size}); train the reward model on the "
                         f"policy's: groundup align reward --model {job.model}")
    _check_prompts(prompts, tok, policy, job.rl.max_new_tokens, job.prompts)
    reference = copy.deepcopy(policy).eval().requires_grad_(False) if job.method == "full" else None
    model = ActorCritic(_prepare(job, policy, tok, cfg))
    ppo = PPOConfig(rollout_size=job.rollout_size, epochs=job.epochs, max_new_tokens=job.rl.max_new_tokens,
                    temperature=job.rl.temperature, kl_coef=job.rl.kl_coef, kl_target=job.kl_target,
                    gamma=job.gamma, lam=job.lam, vf_coef=job.vf_coef, eos_penalty=job.eos_penalty)
    data = PPORollouts(model, tok, [p for _, p in prompts], RewardScorer(rm, tok, prompted), ppo, reference)
    _say(f"{len(prompts)} prompts; method={job.method} {summary(model.policy)}; a rollout of {job.rollout_size} "
         f"serves {job.epochs * job.rollout_size // cfg.batch_size} steps")
    write_run_record(job.out_dir, record, RECORD)
    result = train(model, ppo_objective(ppo.clip, ppo.clip_value, ppo.vf_coef), data, cfg, tokenizer=tok)
    if data.stats:
        first, last = data.stats[0], data.stats[-1]
        _say(f"rollout score {first['score']:.3f} -> {last['score']:.3f}, KL {first['kl']:.3f} -> {last['kl']:.3f} "
             f"(kl_coef {last['kl_coef']:.3g})")
    return {"result": result, "model": model.policy, "tokenizer": tok, "rollouts": data.stats,
            "scorer": data.reward, "reference": reference, **_finish(result, model.policy, tok, job)}


def align_grpo(job: GRPOJob) -> dict:
    _need(job.data, "data", "an instruction JSONL, e.g. --data data/arithmetic/train.jsonl")
    cfg = _config(job)
    if cfg.batch_size % job.group_size:
        raise ValueError(f"train.batch_size={cfg.batch_size} must be a multiple of group_size={job.group_size} "
                         "(prompts x samples)")
    record = _record(job, "grpo", cfg)
    policy, tok = _load(job, "grpo")
    examples = eval_pairs(job.data, tok, job.separator)  # rendered as fine-tuning renders them
    tests = eval_pairs(job.eval_data, tok, job.separator) if job.eval_data else None
    _check_prompts(list(enumerate((p for p, _ in examples), 1)), tok, policy, job.rl.max_new_tokens, job.data)
    reference = copy.deepcopy(policy).eval().requires_grad_(False) if job.method == "full" else None
    model = _prepare(job, policy, tok, cfg)
    grpo = GRPOConfig(group_size=job.group_size, max_new_tokens=job.rl.max_new_tokens,
                      temperature=job.rl.temperature, kl_coef=job.rl.kl_coef)
    data = GroupRollouts(model, tok, examples, lambda text, answer: float(exact_match(text, answer)), grpo, reference)
    _say(f"{len(examples)} prompts, {job.group_size} samples each; method={job.method} {summary(model)}")
    write_run_record(job.out_dir, record, RECORD)
    result = train(model, grpo_objective(grpo.kl_coef, grpo.clip), data, cfg, tokenizer=tok)
    out = {"result": result, "model": model, "tokenizer": tok,
           **_finish(result, model, tok, job, PromptFormat("prompt_completion", job.separator))}
    if tests is not None:
        out["exact_match"] = evaluate_exact_match(model.eval(), tok, tests, job.rl.max_new_tokens)
        _say(f"exact match on {job.eval_data}: {out['exact_match']:.3f}")
    return out


__all__ = ["align_dpo", "align_grpo", "align_ppo", "align_reward"]
