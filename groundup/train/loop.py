"""The one training loop: every objective (causal LM, MLM+NSP, seq2seq, custom), one or many ranks.

Per optimizer step:

    global batch (shared-seed generator) ─► count targets ─► this rank's rows ─► grad_accum micro-steps
        micro-step: autocast forward ─► loss share ─► backward (DDP all-reduce only on the last one)
    ─► unscale (fp16) ─► clip grad norm ─► lr_at(step) ─► AdamW step ─► zero grads
    every log_every: metrics row / progress bar (or a printed line);  every eval_every: val loss;
    every ckpt_every: checkpoint;  after Ctrl-C: checkpoint, then TrainingInterrupted (interrupt.py)

Exact resume: batches come only from a dedicated torch.Generator seeded from cfg.seed; its state,
torch's global RNG state of every rank (dropout), the step and the loss history are saved in the
checkpoint and restored, so stopping at step k and resuming reproduces the uninterrupted run
bit for bit (fp32). Evaluation draws from its own fixed-seed generator and never touches them.
"""

from __future__ import annotations

import gc
import inspect
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from groundup import runtime
from groundup.train import distributed as D
from groundup.train.checkpoint import CheckpointError, load_checkpoint, pack_tensor, save_checkpoint, unpack_tensor
from groundup.train.config import TrainConfig
from groundup.train.interrupt import DeferredInterrupt, TrainingInterrupted
from groundup.train.metrics import MetricsCSV, Progress, perplexity, plot_loss_curve
from groundup.train.objectives import Objective, count_targets, get_objective, token_count
from groundup.train.optim import build_optimizer, lr_at, set_lr

CKPT_NAME = "ckpt"
CSV_NAME = "metrics.csv"
PNG_NAME = "loss.png"
EVAL_SEED_OFFSET = 7919  # eval batches: their own generator, the same batches at every eval
RESUME_KEYS = ("step", "losses", "data_generator", "torch_rng")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class BatchSource(Protocol):
    def get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]: ...


@dataclass
class TrainResult:
    step: int  # optimizer steps completed
    train_loss: float | None  # loss of the last step
    val_loss: float | None  # last evaluated val loss (None when eval is off)
    checkpoint: Path | None  # rank 0 only
    metrics_csv: Path | None  # rank 0 only
    loss_png: Path | None  # rank 0 only
    losses: list[float] = field(default_factory=list)  # global train loss of every step, from step 1

    def summary(self, unit: str = "nats/token") -> str:
        """The lines a CLI run ends with: its last validation loss and where it wrote its files."""
        val = f"{self.val_loss:.4f} {unit}" if self.val_loss is not None else "not evaluated (--train.eval_every=0)"
        return "\n".join((f"validation loss: {val}", f"checkpoint:      {self.checkpoint}",
                          f"metrics CSV:     {self.metrics_csv}", f"loss curve:      {self.loss_png}"))


def _has_checkpoint(ckpt_dir: Path) -> bool:
    old = ckpt_dir.parent / f".{ckpt_dir.name}.old"  # a swap interrupted mid-save; load_checkpoint restores it
    return ckpt_dir.exists() or old.is_dir()


def check_out_dir(
    cfg: TrainConfig, resume: str = "TrainConfig.resume=True", out_dir: str = "TrainConfig.out_dir"
) -> None:
    """Refuse to start a new run over one that left a checkpoint in cfg.out_dir (unless resuming). Jobs call it
    before they write anything there, naming their own options (`resume`, `out_dir`: e.g. CLI flags)."""
    ckpt = Path(cfg.out_dir) / CKPT_NAME
    if _has_checkpoint(ckpt) and not cfg.resume:
        raise FileExistsError(f"{ckpt} already holds a checkpoint; set {resume} to continue it, or choose another "
                              f"{out_dir}")


class _Trainer:
    """Holds one run's state so the loop reads top to bottom; `train()` is the public entry point."""

    def __init__(
        self, model: nn.Module, objective: str | Objective, data: BatchSource, cfg: TrainConfig, tokenizer: Any
    ) -> None:
        self.cfg, self.data, self.tokenizer = cfg, data, tokenizer
        self.env = D.detect()
        self._check_split()
        self.device = D.setup(self.env, cfg.resolved_device())
        self._build(model, objective)

    def _build(self, model: nn.Module, objective: str | Objective) -> None:
        cfg = self.cfg
        self.objective = get_objective(objective)
        self.takes_counts = "counts" in inspect.signature(self.objective).parameters
        self.logged = tuple(getattr(self.objective, "logged", ()))  # metrics beyond the loss, for CSV and bar
        self.raw = model.to(self.device)
        self.optimizer = build_optimizer(self.raw, cfg)
        self.dtype = cfg.resolved_dtype(self._micro_step_work(model))
        self._say(runtime.dtype_note(cfg.dtype, self.dtype, self.device.type))
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == "fp16" else None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.losses, self.val_losses, self.pending = 0, [], [], []
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / CKPT_NAME
        self._start_or_resume()
        self.model = D.wrap(self.raw, self.env, self.device, cfg.find_unused_parameters)
        main = self.env.is_main
        self.csv = MetricsCSV(self.out_dir / CSV_NAME, resume_step=self.step, extra=self.logged) if main else None
        self.row_start = self.csv.last_step if self.csv is not None else self.step  # the next row's mean starts here
        self.metric_sum, self.metric_steps = torch.zeros(len(self.logged), device=self.device), 0  # since last row
        self.progress = Progress(cfg.max_steps, self.step, enabled=main and cfg.progress, lines=main,
                                 extra=self.logged)

    def _micro_step_work(self, model: nn.Module) -> int | None:
        """rows x context x d_model^2 of one micro-step's linear layers (what decides bf16 autocast on AMX)."""
        config = getattr(model, "config", None)
        if not hasattr(config, "d_model") or not hasattr(config, "block_size"):
            return None
        rows = self.cfg.batch_size // (self.cfg.grad_accum * self.env.world_size)
        return rows * config.block_size * config.d_model**2

    def _check_split(self) -> None:
        per = self.cfg.grad_accum * self.env.world_size
        if self.cfg.batch_size % per:
            raise ValueError(
                f"TrainConfig.batch_size={self.cfg.batch_size} must be divisible by grad_accum * world_size = "
                f"{self.cfg.grad_accum} * {self.env.world_size}; change batch_size or grad_accum"
            )

    def _say(self, msg: str) -> None:
        if self.env.is_main:
            print(f"[groundup.train] {msg}", flush=True)

    # ---------------------------------------------------------------- start / resume / checkpoint
    def _start_or_resume(self) -> None:
        check_out_dir(self.cfg)
        if not _has_checkpoint(self.ckpt_dir):
            if self.cfg.resume:
                self._say(f"no checkpoint at {self.ckpt_dir} yet: starting a new run")
            torch.manual_seed(self.cfg.seed + self.env.rank)  # dropout differs per rank, reproducibly
            return
        ckpt = load_checkpoint(self.ckpt_dir, model=self.raw, optimizer=self.optimizer)
        self._restore(ckpt.state)
        self._say(f"resumed from {self.ckpt_dir} at step {self.step}")

    def _restore(self, st: dict[str, Any]) -> None:
        missing = [k for k in RESUME_KEYS if k not in st]
        if missing:
            raise CheckpointError(
                f"{self.ckpt_dir}/state.json lacks {missing}, so the run cannot be resumed exactly (it was not "
                "written by train()); load its weights with load_checkpoint() and start a run in a new out_dir"
            )
        self.step = int(st["step"])
        self.losses = [float(x) for x in st["losses"]]
        self.val_losses = [(int(s), float(v)) for s, v in st.get("val_losses", [])]
        self.gen.set_state(unpack_tensor(st["data_generator"]))
        cpu, cuda = st["torch_rng"], st.get("cuda_rng")
        if len(cpu) != self.env.world_size:
            self._say(f"checkpoint has RNG states of {len(cpu)} ranks, this run has {self.env.world_size}: reseeding")
            torch.manual_seed(self.cfg.seed + self.env.rank + self.step)
        else:
            torch.set_rng_state(unpack_tensor(cpu[self.env.rank]))
            if cuda and self.device.type == "cuda":
                torch.cuda.set_rng_state(unpack_tensor(cuda[self.env.rank]), self.device)
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        if st.get("data_state") is not None and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(st["data_state"])  # a batch source with state of its own (PPO's rollout)
        saved = st.get("train_config", {})
        keys = ("batch_size", "seed", "lr", "min_lr", "warmup_steps", "max_steps")
        changed = [k for k in keys if saved.get(k) != getattr(self.cfg, k)]
        if changed:
            self._say(f"note: TrainConfig {changed} differ from the checkpoint's run; resume will not be exact")

    def _save(self) -> None:
        cuda_state = pack_tensor(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else None
        cpu_states = D.gather_objects(pack_tensor(torch.get_rng_state()), self.env)
        cuda_states = D.gather_objects(cuda_state, self.env)
        if not self.env.is_main:
            return
        state = {
            "step": self.step,
            "losses": self.losses,
            "val_losses": self.val_losses,
            "data_generator": pack_tensor(self.gen.get_state()),
            "torch_rng": cpu_states,
            "cuda_rng": cuda_states if cuda_state is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "data_state": self.data.state_dict() if hasattr(self.data, "state_dict") else None,
            "world_size": self.env.world_size,
            "train_config": self.cfg.to_dict(),
        }
        # PEFT: the frozen base is rebuilt from its own files on resume, so only the trained tensors are saved; a
        # model whose frozen part is its own (CLIP's locked LiT tower) says so and is saved whole
        frozen = any(not p.requires_grad for p in self.raw.parameters())
        partial = frozen and not getattr(self.raw, "saves_frozen_weights", False)
        save_checkpoint(self.ckpt_dir, self.raw, self.optimizer, state, self.tokenizer, trainable_only=partial)

    # ---------------------------------------------------------------- one step
    def _autocast(self) -> AbstractContextManager:
        if self.dtype == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.dtype])

    def _draw(self, split: str, rows: int, gen: torch.Generator) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """A global batch from the data, its target counts (on device), and this rank's rows."""
        batch = self.data.get_batch(split, rows, gen)
        got = {k: v.shape[0] for k, v in batch.items()}
        if any(n != rows for n in got.values()):
            raise ValueError(
                f"data.get_batch({split!r}, {rows}) returned row counts {got}; every tensor needs {rows} rows"
            )
        counts = {k: c.to(self.device) for k, c in count_targets(batch).items()} if self.takes_counts else None
        return batch, counts

    def _micro_batches(self, batch: dict[str, Tensor]) -> Iterator[dict[str, Tensor]]:
        """This rank's rows of a global batch, in grad_accum consecutive micro-batches, on the device."""
        local = D.shard(batch, self.env)
        m = self.cfg.batch_size // (self.cfg.grad_accum * self.env.world_size)
        for i in range(self.cfg.grad_accum):
            yield {k: v[i * m : (i + 1) * m].to(self.device, non_blocking=True) for k, v in local.items()}

    def _loss_share(
        self, model: nn.Module, micro: dict[str, Tensor], counts: dict[str, Tensor] | None, n_micro: int
    ) -> tuple[Tensor, Tensor]:
        """This micro-batch's share of the global mean loss (exact with counts, equal-weight without), and its
        share of the logged metrics' means (the same convention)."""
        with self._autocast():
            loss, metrics = self.objective(model, micro, **({} if counts is None else {"counts": counts}))
        logged = torch.stack([metrics[k].detach().float() for k in self.logged]) if self.logged else self.metric_sum
        scale = 1 if counts is not None else n_micro * self.env.world_size
        return loss / scale, logged / scale

    def _train_step(self) -> int:
        """One optimizer step. Returns the number of tokens in the global batch."""
        cfg = self.cfg
        batch, counts = self._draw("train", cfg.batch_size, self.gen)
        total = torch.zeros((), device=self.device)
        for i, micro in enumerate(self._micro_batches(batch)):
            sync = i == cfg.grad_accum - 1 or not self.env.enabled
            with nullcontext() if sync else self.model.no_sync():
                share, logged = self._loss_share(self.model, micro, counts, cfg.grad_accum)
                scaled = share * self.env.world_size  # DDP averages gradients over ranks
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += share.detach()
            self.metric_sum += logged
        self.metric_steps += 1
        self._optimizer_step()
        self.pending.append(total)
        return token_count(batch)

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.grad_clip)
        set_lr(self.optimizer, lr_at(self.step, self.cfg))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        hook = getattr(self.raw, "after_optimizer_step", None)  # e.g. CLIP clamps its learned temperature
        if hook is not None:
            hook()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _flush_losses(self) -> list[float]:
        """Move pending per-step losses to the host (one sync, one all-reduce for many steps)."""
        if not self.pending:
            return []
        new = D.all_reduce_sum(torch.stack(self.pending), self.env).tolist()
        self.pending = []
        self.losses.extend(new)
        return new

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over eval_batches global 'val' batches of batch_size rows, split into micro-batches
        like training (so the value does not depend on grad_accum or world size), from a fixed-seed
        generator: the same batches at every eval, and training's generators are never touched."""
        gen = torch.Generator().manual_seed(self.cfg.seed + EVAL_SEED_OFFSET)
        was_training = self.raw.training
        self.raw.eval()
        total = torch.zeros((), device=self.device)
        for _ in range(self.cfg.eval_batches):
            batch, counts = self._draw("val", self.cfg.batch_size, gen)
            for micro in self._micro_batches(batch):
                total += self._loss_share(self.raw, micro, counts, self.cfg.grad_accum)[0].float()
        self.raw.train(was_training)
        return D.all_reduce_sum(total, self.env).item() / self.cfg.eval_batches

    # ---------------------------------------------------------------- the loop
    def run(self) -> TrainResult:
        cfg = self.cfg
        self.raw.train()
        tokens, t0 = 0, time.perf_counter()
        with DeferredInterrupt() as interrupt:
            while self.step < cfg.max_steps:
                tokens += self._train_step()
                self.progress.update()
                s, last = self.step, self.step == cfg.max_steps
                do_eval = cfg.eval_every > 0 and (s % cfg.eval_every == 0 or last)
                do_ckpt = (cfg.ckpt_every > 0 and s % cfg.ckpt_every == 0) or last
                logged = s % cfg.log_every == 0 or do_eval or do_ckpt
                if logged:
                    self._log_row(tokens / max(time.perf_counter() - t0, 1e-9), do_eval)
                    if do_ckpt:
                        self._save()
                    tokens, t0 = 0, time.perf_counter()
                if not last and self._stop_requested(interrupt, logged):
                    self._stop(saved=do_ckpt)
        return self._result()

    def _log_row(self, tokens_per_s: float, do_eval: bool) -> None:
        """A metrics row: the mean train loss since the previous row, lr, tokens/s, and val loss when evaluated."""
        s = self.step
        self._flush_losses()
        since = self.losses[self.row_start:]
        row = {"step": s, "lr": lr_at(s - 1, self.cfg), "loss": sum(since) / len(since), "tokens_per_s": tokens_per_s}
        if self.logged:
            means = D.all_reduce_sum(self.metric_sum, self.env) / max(self.metric_steps, 1)
            row.update(zip(self.logged, means.tolist(), strict=True))
            self.metric_sum.zero_()
        self.row_start, self.metric_steps = s, 0
        if do_eval:
            val = self.evaluate()
            self.val_losses.append((s, val))
            row.update(val_loss=val, val_ppl=perplexity(val))
        if self.csv is not None:
            self.csv.write(row)
        self.progress.show(row)

    def _stop_requested(self, interrupt: DeferredInterrupt, logged: bool) -> bool:
        """Whether Ctrl-C was pressed. Ranks agree at logged steps (one all-reduce), so all stop after one step."""
        if not self.env.enabled:
            return interrupt.pressed
        if not logged:
            return False
        votes = torch.tensor(float(interrupt.pressed), device=self.device)
        return D.all_reduce_sum(votes, self.env).item() > 0

    def _stop(self, saved: bool) -> None:
        """After Ctrl-C: this step's checkpoint (unless just saved), then TrainingInterrupted naming it."""
        self._flush_losses()
        if not saved:
            self._save()
        raise TrainingInterrupted(self.step, self.cfg.max_steps, self.ckpt_dir)

    def _result(self) -> TrainResult:
        self._flush_losses()
        self.progress.close()
        main = self.env.is_main
        csv_path = self.out_dir / CSV_NAME if main else None
        png = plot_loss_curve(csv_path, self.out_dir / PNG_NAME) if main else None
        return TrainResult(
            step=self.step,
            train_loss=self.losses[-1] if self.losses else None,
            val_loss=self.val_losses[-1][1] if self.val_losses else None,
            checkpoint=self.ckpt_dir if main and self.ckpt_dir.is_dir() else None,
            metrics_csv=csv_path,
            loss_png=png,
            losses=list(self.losses),
        )

    def close(self, clean: bool) -> None:
        """Release resources; after a clean run, wait for the other ranks (distributed.finish)."""
        self.progress.close()
        if self.env.enabled:
            # Free the DDP wrapper (its reducer holds gloo/nccl work objects) while the interpreter and
            # the process group are alive; left to interpreter exit it can abort the process.
            self.model = self.raw
            gc.collect()
        D.finish(self.env, clean)


def train(
    model: nn.Module,
    objective: str | Objective,
    data: BatchSource,
    cfg: TrainConfig,
    tokenizer: Any = None,
) -> TrainResult:
    """Train `model` on `data` with `objective` ('causal_lm' | 'mlm_nsp' | 'seq2seq' or a function).

    `data.get_batch(split, batch_size, generator)` must draw all its randomness from `generator`.
    Files (rank 0 only) go to cfg.out_dir: ckpt/ (see checkpoint.py), metrics.csv, loss.png.
    Run under `torchrun --nproc_per_node=N` for data parallelism; results match one process.
    Ctrl-C finishes the step, saves ckpt/ and raises TrainingInterrupted (a KeyboardInterrupt): resume=True
    continues from there exactly.
    """
    trainer = _Trainer(model, objective, data, cfg, tokenizer)
    clean = False
    try:
        result = trainer.run()
        clean = True
        return result
    except RuntimeError as err:
        clear = D.explain_ddp_error(err)
        if clear is None:
            raise
        raise clear from err
    finally:
        trainer.close(clean)
