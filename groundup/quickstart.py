"""`groundup quickstart`: train a small character-level GPT on the Shakespeare corpus shipped with
groundup, on a laptop CPU in a few minutes, then show what it learned."""

from __future__ import annotations

from .generate import GenerationConfig, generate_text
from .jobs.train import DataSpec, PretrainJob, QuickstartJob
from .loading import load_pretrained
from .pretrain import pretrain
from .train import TrainConfig, TrainResult


def quickstart_job(job: QuickstartJob) -> PretrainJob:
    """The default recipe, tuned on 2 CPU cores (BENCHMARKS.md): nanoGPT's CPU model size, but Llama-style
    (RoPE, RMSNorm, SwiGLU) and a 3x higher learning rate, which reach a lower loss in the same steps."""
    model = dict(preset="llama-tiny", block_size=64, n_layer=4, n_head=4, n_kv_head=4, d_model=128, d_ff=344)
    train = TrainConfig(
        out_dir=job.out_dir, max_steps=job.max_steps, batch_size=12, lr=3e-3, min_lr=3e-4, warmup_steps=50,
        weight_decay=0.1, beta2=0.99, eval_every=250, eval_batches=20, ckpt_every=1000, dtype=job.dtype,
        seed=job.seed, log_every=10, resume=True,  # a second run continues (or reuses) the first
    )
    return PretrainJob(model=model, data=DataSpec(tokenizer="char"), train=train)


def quickstart(job: QuickstartJob) -> TrainResult:
    """Train a small GPT on Shakespeare (a few minutes on 2 CPU cores) and print samples."""
    result = pretrain(quickstart_job(job))  # prints the validation loss and where the files are
    model, tok = load_pretrained(result.checkpoint)
    cfg = GenerationConfig(max_new_tokens=job.sample_tokens, temperature=0.8, top_k=50, seed=job.seed)
    for i, text in enumerate(generate_text(model, tok, ["\n"] * job.samples, cfg)):
        print(f"\n--- sample {i + 1} ---\n{text.strip()}")
    print(f"\nnext: groundup generate --model {result.checkpoint} --prompt 'ROMEO:'")
    return result
