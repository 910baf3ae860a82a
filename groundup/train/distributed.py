"""Data parallelism with DistributedDataParallel, launched by torchrun.

How the global batch is split (this is what makes N ranks == 1 process at the same global batch):

    shared-seed generator ──► get_batch('train', batch_size) ──► identical global batch on every rank
                                                                    │ rows [r*B/W, (r+1)*B/W)
                                                                    ▼
                                                          rank r's slice ──► grad_accum micro-batches

Every rank draws the *same* global batch from a generator seeded identically, then keeps its own
contiguous block of rows. Loss normalizers are counted on the global batch (objectives.py), so
the per-rank losses are exact shares of the global mean; DDP averages gradients over ranks, so
the loop multiplies each share by world_size before backward. Only rank 0 writes files or prints.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from None


def detect() -> DistEnv:
    """RANK / WORLD_SIZE / LOCAL_RANK as set by torchrun; a single process when they are absent."""
    env = DistEnv(rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1), local_rank=_env_int("LOCAL_RANK", 0))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise ValueError(f"RANK={env.rank} / WORLD_SIZE={env.world_size} are inconsistent; launch with torchrun")
    return env


class _Owned:
    """The process group this module created: kept for the whole process, destroyed at exit.

    Not destroyed after each train(): under torchrun, re-creating the default group in the same
    process reuses the launcher's rendezvous store keys and can hang (seen here), so a script that
    calls train() twice must get the same group. It is destroyed by an atexit hook while the
    interpreter is still alive (letting Gloo/NCCL objects die during interpreter finalization can
    abort the process), and only if the last run ended cleanly: after an error other ranks may be
    stuck in a collective, and a collective-style shutdown could then hang instead of exiting.
    """

    created = False
    clean = True


def _destroy_at_exit() -> None:
    if _Owned.clean and dist.is_initialized():
        dist.destroy_process_group()


def setup(env: DistEnv, device_type: str) -> torch.device:
    """Pick this rank's device and, if needed, init the process group (gloo on CPU, nccl on CUDA).

    A group the caller created is used as is and left to the caller to destroy.
    """
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device("cpu")
    if env.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        if not _Owned.created:
            atexit.register(_destroy_at_exit)
            _Owned.created = True
    return device


def wrap(model: nn.Module, env: DistEnv, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around `model` when running on several ranks, else `model` itself.

    find_unused_parameters is needed when some trainable parameters get no gradient from the
    objective (e.g. a classification head during MLM pretraining); it costs a graph traversal per step.
    """
    if not env.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


UNUSED_PARAMS_HINT = "Expected to have finished reduction in the prior iteration"


def explain_ddp_error(err: RuntimeError) -> RuntimeError | None:
    """A clear error for DDP's unused-parameter failure, or None for any other error."""
    if UNUSED_PARAMS_HINT not in str(err):
        return None
    return RuntimeError(
        "DDP: some trainable parameters received no gradient in the last step (the objective does not use "
        "them, e.g. a head of another task). Set TrainConfig.find_unused_parameters=True, or freeze those "
        "parameters (requires_grad=False)"
    )


def shard(batch: dict[str, Tensor], env: DistEnv) -> dict[str, Tensor]:
    """This rank's contiguous block of rows of every tensor in a global batch."""
    if not env.enabled:
        return batch
    out = {}
    for key, value in batch.items():
        rows = value.shape[0]
        if rows % env.world_size:
            raise ValueError(
                f"batch[{key!r}] has {rows} rows, not divisible by WORLD_SIZE={env.world_size}; "
                "make TrainConfig.batch_size a multiple of world_size * grad_accum"
            )
        per = rows // env.world_size
        out[key] = value[env.rank * per : (env.rank + 1) * per]
    return out


def all_reduce_sum(t: Tensor, env: DistEnv) -> Tensor:
    """Sum `t` over ranks in place (no-op on one process); returns `t`."""
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects, e.g. RNG states)."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def finish(env: DistEnv, clean: bool) -> None:
    """End of a train() call: after a clean run, wait for all ranks (none leaves while others still
    write); record whether the group may be destroyed at exit (see _Owned)."""
    _Owned.clean = clean
    if clean and env.enabled and dist.is_initialized():
        dist.barrier()
