"""`groundup finetune --method flamingo|llava`: teach a frozen decoder to see through a frozen image encoder.

Only the connector trains (groundup/vlm.py), with the one training loop and the causal_lm objective (the batch
carries the images' features, computed once by the frozen encoder). The result, out_dir/vlm/, is what `groundup
chat --model` and `groundup serve --model` load; --eval_data (LLaVA JSON) reports answer exact match after training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..data.arithmetic import exact_match
from ..data.vlm import VLMData, load_llava_json
from ..finetune import FinetuneResult, _job_record, _say, train_config, write_run_record
from ..generate import GenerationConfig
from ..jobs.train import FinetuneJob
from ..peft import count_parameters
from ..train import TrainResult, train
from ..vlm import answer, build_vision_lm, questions, save_vision_lm


def finetune_vlm(job: FinetuneJob) -> FinetuneResult:
    if not job.data.path:
        raise ValueError("data.path is missing; give LLaVA conversation JSON, e.g. --data.path vlm/train.json "
                         "(`groundup data vlm --out_dir vlm` writes one)")
    cfg = train_config(job)
    record = _job_record(job, cfg)
    examples = load_llava_json(job.data.path)  # every record checked before anything is loaded or written
    tests = load_llava_json(job.eval_data) if job.eval_data else []
    torch.manual_seed(cfg.seed)  # the connector's initialisation is part of the run
    model, tok = build_vision_lm(job.model, job.vision, dataclasses.replace(job.vlm, kind=job.method))
    block = job.data.block_size or model.config.block_size
    data = VLMData(examples, tok, model, block, job.data.val_fraction, cfg.seed, job.data.template)
    if cfg.eval_every and not data.split_rows["val"]:
        cfg = dataclasses.replace(cfg, eval_every=0)
    trainable, total = count_parameters(model)
    _say(f"method={job.method} vision={job.vision} lr={cfg.lr:g}: {trainable:,} of {total:,} parameters train; "
         f"{len(data.split_rows['train'])} train / {len(data.split_rows['val'])} val conversations, "
         f"{len(data.features)} images")
    write_run_record(job.out_dir, record)
    result = train(model, "causal_lm", data, cfg, tokenizer=tok)
    out = save_vision_lm(model, Path(job.out_dir) / "vlm", job.model, job.vision, tok)
    _say(f"wrote {out}")
    accuracy = None
    if tests:
        asked = questions(tests)
        replies = answer(model.eval(), tok, [q for q, _ in asked], GenerationConfig(
            max_new_tokens=job.eval_max_new_tokens, temperature=0.0))
        accuracy = sum(exact_match(r, a) for r, (_, a) in zip(replies, asked, strict=True)) / len(asked)
        _say(f"exact match on {job.eval_data}: {accuracy:.3f}")
    return FinetuneResult(**{f.name: getattr(result, f.name) for f in dataclasses.fields(TrainResult)},
                          exact_match=accuracy, model_dir=out)
