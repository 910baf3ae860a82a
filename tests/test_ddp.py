"""DDP on 2 CPU processes (gloo) == one process at the same global batch."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _worker_module():
    spec = importlib.util.spec_from_file_location("ddp_worker", TESTS / "ddp_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



def test_ddp_two_ranks_match_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        str(TESTS / "ddp_worker.py"), str(tmp_path / "ddp"),
    ]
    # Start the 2-rank run, compute the one-process reference while it runs (2 cores), then compare.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, so a kill reaches the workers
    try:
        # Reference: one process, no accumulation (DDP uses 2 ranks x 2 micro-steps for the LM).
        single = _worker_module().run_all(tmp_path / "single", lm_grad_accum=1)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, f"torchrun failed:\n{out[-20000:]}"
    ddp = json.loads((tmp_path / "ddp" / "losses.json").read_text())
    assert ddp["world_size"] == 2
    assert ddp["group_kept_for_reuse"]

    assert len(ddp["lm"]) == len(single["lm"]) == 5
    assert len(ddp["mlm"]) == len(single["mlm"]) == 4
    torch.testing.assert_close(torch.tensor(ddp["lm"]), torch.tensor(single["lm"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(ddp["mlm"]), torch.tensor(single["mlm"]), rtol=1e-5, atol=1e-5)
    assert abs(ddp["lm_val"] - single["lm_val"]) < 1e-5
    assert single["lm"][-1] < single["lm"][0]  # it trained, so the comparison is not between two no-ops
    # Only rank 0 wrote files, and they are complete.
    assert (tmp_path / "ddp" / "lm" / "metrics.csv").is_file()
    assert (tmp_path / "ddp" / "lm" / "ckpt" / "model.safetensors").is_file()
