"""Fine-tuning: a pretrained model + instruction JSONL + one method -> the one training loop -> a saved result.

    load_pretrained(model) ──> prepare_model(method): full = every weight trains, else peft.inject(...) ──┐
    load_instructions(jsonl) ──> InstructData (loss on completions only) ────────────────────────────────┴─>
        train(model, "causal_lm", data, TrainConfig) ──> out_dir/
            adapter/      the adapter, groundup format      (load_adapter, `groundup generate --adapter`)
            adapter_hf/   the same adapter in Hugging Face PEFT's layout (lora, ia3, prompt, prefix)
            model/        method=full: a groundup checkpoint (load_pretrained)
            ckpt/         the loop's resumable checkpoint: the trainable parameters, optimizer, RNG states
            adapter*/ and model/ hold prompt_format.json: how the prompts were formatted (separator, template),
            which generate / chat / serve apply to a prompt by default (data/prompt_format.py)

Resume (TrainConfig.resume) rebuilds the same wrapped model (same base, same inject) before train() loads
ckpt/ into it, so the saved state dict always meets the structure it came from. Methods differ only in
which PeftConfig is injected and in the default learning rate (METHOD_LR): no per-method loops (DESIGN rule 6).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import runtime
from .apps.by_arch import require_arch
from .apps.export import check_out, out_dtype, write_model
from .chat import chat_template_from
from .data.arithmetic import exact_match
from .data.instruct import DEFAULT_SEPARATOR, InstructData, load_instructions
from .data.prompt_format import PromptFormat, carry_prompt_format, prompt_format_for, save_prompt_format
from .generate import GenerationConfig, context_room, generate_text
from .jobs.train import METHODS, VISION_METHODS, DataOptions, FinetuneJob, MergeJob, PeftOptions
from .loading import load_pretrained
from .peft import (
    BitFitConfig,
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftError,
    PrefixTuningConfig,
    PromptTuningConfig,
    inject,
    load_adapter,
    merge_and_unload,
    save_adapter,
    summary,
)
from .peft.api import peft_state
from .quant import quantize
from .tokenizer import Tokenizer
from .train import TrainConfig, TrainResult, save_checkpoint, train

# Peak learning rates that work for each method (peft / paper defaults); TrainConfig's own default lr means
# "use this", any other train.lr is taken as given.
METHOD_LR = {"full": 5e-5, "lora": 5e-4, "ia3": 3e-3, "bitfit": 1e-3, "prompt": 3e-2, "prefix": 1e-2, "flamingo": 3e-4,
             "llava": 1e-3}
HF_LAYOUT = ("lora", "ia3", "prompt", "prefix")  # methods groundup.interop.peft_format can write


@dataclass
class FinetuneResult(TrainResult):
    """TrainResult plus where the fine-tuned result was written and its exact-match accuracy (if asked)."""

    adapter: Path | None = None  # groundup adapter (PEFT methods)
    adapter_hf: Path | None = None  # Hugging Face PEFT layout (lora, ia3, prompt, prefix)
    model_dir: Path | None = None  # method=full: a groundup checkpoint
    exact_match: float | None = None


def _say(msg: str) -> None:
    print(f"[groundup.finetune] {msg}", flush=True)


# --- the model --------------------------------------------------------------------------------------------------
def peft_config(method: str, opts: PeftOptions) -> PeftConfig | None:
    """The PeftConfig a method injects (None for full fine-tuning)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use one of {list(METHODS)}")
    targets = tuple(opts.target_modules) if opts.target_modules is not None else None
    if method == "lora":
        extra = {"target_modules": targets} if targets is not None else {}
        return LoraConfig(r=opts.r, alpha=opts.alpha, dropout=opts.dropout, **extra)
    if method == "ia3":
        targets = targets or IA3Config.target_modules
        ff = opts.feedforward_modules
        ff = tuple(ff) if ff is not None else tuple(p for p in IA3Config.feedforward_modules if p in targets)
        return IA3Config(target_modules=targets, feedforward_modules=ff)
    if method == "bitfit":
        return BitFitConfig(target_modules=targets)
    text = opts.init_text
    init = "text" if text else "random"
    if method == "prompt":
        return PromptTuningConfig(opts.n_virtual_tokens, init=init, init_text=text)
    if method == "prefix":
        return PrefixTuningConfig(opts.n_virtual_tokens, reparam_hidden=opts.prefix_hidden, init=init, init_text=text)
    return None


def prepare_model(model: nn.Module, method: str, opts: PeftOptions, tokenizer: Tokenizer | None = None) -> nn.Module:
    """The model to train: every parameter trainable (full), or the base frozen with `method`'s adapter injected.
    Use the returned model (prompt / prefix tuning wrap the base)."""
    cfg = peft_config(method, opts)
    if cfg is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    return inject(model, cfg, tokenizer=tokenizer)


def attach_adapter(model: nn.Module, path: str | Path, name: str | None = None) -> nn.Module:
    """Load a saved adapter onto its base model, groundup format (adapter.safetensors) or Hugging Face PEFT
    layout (adapter_model.safetensors), under `name` (default: the saved name, or peft's "default"); returns
    the model to use (prompt / prefix adapters wrap the base)."""
    path = Path(path)
    if (path / "adapter.safetensors").is_file():
        return load_adapter(model, path, name)
    if (path / "adapter_model.safetensors").is_file():
        from .interop.peft_format import load_peft

        return load_peft(model, path, name or "default")
    raise FileNotFoundError(f"adapter {str(path)!r}: no adapter.safetensors (groundup) or adapter_model.safetensors "
                            "(Hugging Face PEFT) there; pass the adapter/ folder a fine-tuning run wrote")


def merge_for_inference(model: nn.Module) -> nn.Module:
    """A LoRA / IA3 / BitFit model with its adapter folded into the weights (same output, the base's speed, and
    plain nn.Linear layers that pack_for_inference can pack); other models unchanged. An adapter on tied weights
    cannot be folded and stays unmerged."""
    state = getattr(model, "peft_state", None)
    if state is None or state.method not in ("lora", "ia3", "bitfit"):
        return model
    try:
        return merge_and_unload(model)
    except PeftError:  # e.g. LoRA on a tied lm_head: refused before any weight changes
        return model


def save_finetuned(model: nn.Module, tokenizer: Tokenizer | None, method: str, out_dir: str | Path,
                   prompt_format: PromptFormat | None = None) -> dict[str, Path]:
    """Write the fine-tuned result under out_dir: model/ (full) or adapter/ + adapter_hf/ (PEFT methods), each
    with the prompt_format.json of `prompt_format` (how the training prompts were formatted) when given."""
    saved = _save_weights(model, tokenizer, method, Path(out_dir))
    for folder in saved.values() if prompt_format is not None else ():
        save_prompt_format(prompt_format, folder)
    return saved


def _save_weights(model: nn.Module, tokenizer: Tokenizer | None, method: str, out: Path) -> dict[str, Path]:
    if method == "full":
        return {"model_dir": save_checkpoint(out / "model", model, tokenizer=tokenizer)}
    saved = {"adapter": save_adapter(model, out / "adapter")}
    if method in HF_LAYOUT:
        from .interop.peft_format import save_peft

        try:
            saved["adapter_hf"] = save_peft(model, out / "adapter_hf")
        except PeftError as e:  # a model family the HF layout does not map: the groundup adapter stands
            _say(f"no Hugging Face PEFT copy of the adapter: {e}")
    return saved


# --- evaluation -------------------------------------------------------------------------------------------------
def greedy_completions(model: nn.Module, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int = 32,
                       batch_size: int = 16, stop: Sequence[str] = ()) -> list[str]:
    """Greedy completions of `prompts`, generated `batch_size` at a time (left-padded batches)."""
    if prompts:  # like a plain model's, generation stops at the end of the context, virtual tokens included
        longest = max(len(tokenizer.encode(p)) for p in prompts)
        max_new_tokens = max(1, min(max_new_tokens, context_room(model) - longest))
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(stop))
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out += generate_text(model, tokenizer, list(prompts[i: i + batch_size]), cfg)
    return out


def evaluate_exact_match(model: nn.Module, tokenizer: Tokenizer, examples: Sequence[tuple[str, str]],
                         max_new_tokens: int = 32, batch_size: int = 16) -> float:
    """Fraction of (prompt, completion) pairs whose greedy completion equals the expected one (whitespace
    collapsed, groundup.data.exact_match). Generation stops at the tokenizer's eos."""
    if not examples:
        raise ValueError("evaluate_exact_match: no examples; pass (prompt, completion) pairs")
    preds = greedy_completions(model, tokenizer, [p for p, _ in examples], max_new_tokens, batch_size)
    return sum(exact_match(p, c) for p, (_, c) in zip(preds, examples, strict=True)) / len(examples)


def eval_pairs(path: str | Path, tokenizer: Tokenizer, separator: str = DEFAULT_SEPARATOR) -> list[tuple[str, str]]:
    """(prompt, completion) pairs of an instruction JSONL, rendered exactly as training renders them."""
    examples, _ = load_instructions(path, separator=separator)
    return InstructData(examples, tokenizer, block_size=1 << 30, val_fraction=0.0).eval_examples("train")


# --- the job ----------------------------------------------------------------------------------------------------
def train_config(job: FinetuneJob) -> TrainConfig:
    """job.train with out_dir = job.out_dir, and the method's learning rate (METHOD_LR) unless train.lr was set
    (a train.lr equal to TrainConfig's default counts as unset); min_lr defaults to lr / 10."""
    default = TrainConfig()
    cfg = job.train
    if cfg.out_dir not in (default.out_dir, job.out_dir):
        raise ValueError(f"train.out_dir={cfg.out_dir!r}: a fine-tuning run writes to out_dir; set out_dir instead")
    lr = METHOD_LR[job.method] if cfg.lr == default.lr else cfg.lr
    min_lr = lr / 10 if cfg.min_lr == default.min_lr else cfg.min_lr
    return dataclasses.replace(cfg, out_dir=job.out_dir, lr=lr, min_lr=min_lr)


def _block_size(job: FinetuneJob, model: nn.Module) -> int:
    virtual = job.peft.n_virtual_tokens if job.method in ("prompt", "prefix") else 0
    room = model.config.block_size - virtual
    block = job.data.block_size or room
    if not 1 <= block <= room:
        raise ValueError(f"data.block_size={block}: the model's context holds {model.config.block_size} positions"
                         + (f", {virtual} of them virtual tokens" if virtual else "") + f"; use 1..{room}")
    return block


def training_prompt_format(job: FinetuneJob, formats: dict[str, int], data: InstructData) -> PromptFormat | None:
    """How this run formatted its prompts (written as prompt_format.json beside its result, so that generate, chat
    and serve format a prompt the same way); mixed data records its most common format, and says so."""
    fmt = prompt_format_for(formats, job.data.separator, data.template)
    if fmt is not None and len([n for n in formats.values() if n]) > 1:
        _say(f"the data mixes formats {formats}; prompt_format.json records the most common one, {fmt.kind}")
    return fmt


JOB_RECORD = "finetune_job.json"


def _job_record(job: FinetuneJob, cfg: TrainConfig) -> dict | None:
    mine = {"model": job.model, "method": job.method, "peft": dataclasses.asdict(job.peft),
            **({"quantize": job.quantize} if job.quantize else {})}  # absent for a float base, as in older records
    return run_record(job.out_dir, mine, cfg.resume, JOB_RECORD, "--model/--method/--peft")


def run_record(out_dir: str, mine: dict, resume: bool, name: str, flags: str) -> dict | None:
    """What out_dir/<name> is to hold (None: keep the record there): `mine`, the settings that build the model.
    When resuming, check first that the run being continued built the same model, so a mismatch is named here
    (with the `flags` to fix) rather than as missing checkpoint keys. Reads only: write_run_record writes it once
    every input has been validated."""
    path = Path(out_dir) / name
    has_ckpt = (Path(out_dir) / "ckpt").exists()
    if has_ckpt and not resume:
        return None  # train() refuses to overwrite that run; keep its record
    if has_ckpt and path.is_file():
        saved = json.loads(path.read_text())
        diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in mine.items() if saved.get(k) != v]
        if diff:
            raise ValueError(f"--train.resume=true, but {out_dir} holds a run with other settings "
                             f"({'; '.join(diff)}); resume with the same {flags} options, or choose another --out_dir")
    return mine


def write_run_record(out_dir: str, record: dict | None, name: str = JOB_RECORD) -> None:
    if record is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / name).write_text(json.dumps(record, indent=2))


def _check_examples(job: FinetuneJob, examples: Sequence[object], skipped: int) -> None:
    if not examples:
        why = f"all {skipped} record(s) were skipped as malformed" if skipped else "the file has no records"
        raise ValueError(f"--data.path={job.data.path}: nothing to train on ({why}); give an instruction JSONL with "
                         'one record a line, e.g. {"prompt": "2 + 2 =", "completion": "4"}')


def finetune(job: FinetuneJob) -> FinetuneResult:
    """Fine-tune a model on instruction JSONL: full, LoRA, IA3, BitFit, prompt or prefix tuning.

    The peak learning rate defaults per method (full 5e-5, lora 5e-4, ia3 3e-3, bitfit 1e-3, prompt 3e-2,
    prefix 1e-2) while train.lr keeps TrainConfig's default 3e-4; any other train.lr is used as given.
    Outputs go to out_dir: adapter/ (+ adapter_hf/) or model/ for method=full, and ckpt/ for train.resume."""
    if job.method in VISION_METHODS:
        from .apps.finetune_vlm import finetune_vlm

        return finetune_vlm(job)
    if not job.data.path:
        raise ValueError("data.path is missing; give an instruction JSONL, e.g. --data.path=train.jsonl")
    cfg = train_config(job)
    record = _job_record(job, cfg)  # nothing is written to out_dir until every input has been validated
    template = chat_template_from(job.data.template, "data.template") if job.data.template else None
    if job.eval_data:  # a missing, empty or malformed file is refused now, not after training
        load_instructions(job.eval_data, separator=job.data.separator)
    examples, report = load_instructions(job.data.path, job.data.fmt, job.data.skip_bad, job.data.separator)
    _say(report.summary())
    _check_examples(job, examples, len(report.skipped))
    rest = runtime.best_dtype(cfg.resolved_device(), "infer") if job.quantize else "fp32"  # what stays float
    model, tok = load_pretrained(job.model, runtime.DTYPES[rest])
    require_arch(model, "finetune")
    if job.quantize:  # QLoRA (Dettmers et al. 2023): the adapters train over a frozen 4-bit base
        _say(f"quantized the base: {quantize(model, job.quantize).summary()}")
    if tok is None or tok.eos_id is None:
        raise ValueError(f"model {job.model!r} has no tokenizer with an eos token; fine-tuning needs one to end "
                         "completions (save the tokenizer with the checkpoint)")
    torch.manual_seed(cfg.seed)  # adapter initialisation is part of the run: the same seed, the same start
    model = prepare_model(model, job.method, job.peft, tok)
    data = InstructData(examples, tok, _block_size(job, model), job.data.val_fraction, job.data.pack, template,
                        cfg.seed)
    if cfg.eval_every and not data.rows["val"]:
        _say(f"no validation examples (val_fraction={job.data.val_fraction}): evaluation off")
        cfg = dataclasses.replace(cfg, eval_every=0)
    _say(f"method={job.method} lr={cfg.lr:g} {summary(model)}; {data.report.summary()}")
    write_run_record(job.out_dir, record)
    result = train(model, "causal_lm", data, cfg, tokenizer=tok)
    saved = save_finetuned(model, tok, job.method, job.out_dir, training_prompt_format(job, report.formats, data))
    _say("wrote " + ", ".join(str(p) for p in saved.values()))
    accuracy = None
    if job.eval_data:
        accuracy = evaluate_exact_match(model.eval(), tok, eval_pairs(job.eval_data, tok, job.data.separator),
                                        job.eval_max_new_tokens)
        _say(f"exact match on {job.eval_data}: {accuracy:.3f}")
    return FinetuneResult(**{f.name: getattr(result, f.name) for f in dataclasses.fields(TrainResult)},
                          exact_match=accuracy, **saved)


def merge_adapter(job: MergeJob) -> Path:
    """Fold a LoRA / IA3 / BitFit adapter into its base model's weights and save the plain model."""
    if not job.model or not job.adapter or not job.out:
        raise ValueError("merge needs --model (the base), --adapter (the adapter folder) and --out (where to write)")
    if job.to not in ("groundup", "hf"):
        raise ValueError(f"to={job.to!r} is unknown; use 'groundup' (a checkpoint) or 'hf' (a Hugging Face folder)")
    out = check_out(job.out, job.overwrite)
    dtype = out_dtype(job.dtype)
    model, tok = load_pretrained(job.model)
    model = attach_adapter(model, job.adapter)
    method = peft_state(model).method
    if method in ("prompt", "prefix"):
        raise PeftError(f"a {method}-tuning adapter cannot be merged: it enters through the model's inputs, not its "
                        "weights; use it unmerged (groundup generate --adapter)")
    written = write_model(merge_and_unload(model), tok, out, job.to, dtype)
    carry_prompt_format(job.adapter, written)  # the merged model is prompted as the adapter was
    print(f"merged {job.adapter} ({method}) into {job.model}; wrote {written}")
    return written


__all__ = [
    "METHODS", "METHOD_LR", "DataOptions", "FinetuneJob", "FinetuneResult", "MergeJob", "PeftOptions",
    "attach_adapter", "eval_pairs", "evaluate_exact_match", "finetune", "greedy_completions", "merge_adapter",
    "merge_for_inference",
    "peft_config", "prepare_model", "save_finetuned", "train_config", "training_prompt_format",
]
