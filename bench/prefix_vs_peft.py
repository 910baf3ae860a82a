"""Prefix tuning, groundup vs Hugging Face peft: the same start and the same batches give the same loss curve.

SmolLM2-135M-Instruct (groundup) and its Hugging Face export under peft's PrefixTuningConfig train 20 virtual
tokens on the arithmetic task of bench/finetune_methods.py: the same batches, AdamW at a constant rate, fp32,
no warmup (the comparison is of the models, not of a schedule).

    direct, N(0, 1) start   both start from the same tensor (peft's own init): the curves must agree
    MLP, each its own init  groundup's and peft's reparameterisation: do both stall the same way?
    direct, words start     groundup's init='text' (the model's keys and values of PROMPT_INIT)

    python bench/prefix_vs_peft.py [--steps 40] [--lr 1e-2] [--threads N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from finetune_methods import DATA, MODEL, PROMPT_INIT  # noqa: E402

N_VIRTUAL = 20
SHOWN = (0, 4, 9, 19, 29, 39)  # steps whose loss the table prints (0-based)


def batches(tok, steps: int, batch: int = 8) -> list[dict[str, torch.Tensor]]:
    from groundup.data.arithmetic import make_arithmetic_splits
    from groundup.data.instruct import InstructData, parse_instructions

    train, _ = make_arithmetic_splits(4000, 200, **DATA)
    data = InstructData(parse_instructions(train)[0], tok, block_size=64, val_fraction=0.0, seed=0)
    g = torch.Generator().manual_seed(0)
    return [data.get_batch("train", batch, g) for _ in range(steps)]


def curve(forward, params, data, lr: float) -> tuple[list[float], float]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses, t0 = [], time.perf_counter()
    for b in data:
        logits = forward(b)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), b["labels"].reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, (time.perf_counter() - t0) / len(data)


def ours(base, tok, kind: str, start: torch.Tensor | None):
    import copy

    from groundup import peft as P
    from groundup.peft.prefix import prefix_from_flat

    cfg = {"mlp": P.PrefixTuningConfig(N_VIRTUAL, reparam_hidden=512),
           "direct": P.PrefixTuningConfig(N_VIRTUAL, reparam_hidden=None),
           "words": P.PrefixTuningConfig(N_VIRTUAL, reparam_hidden=None, init="text", init_text=PROMPT_INIT)}[kind]
    model = P.inject(copy.deepcopy(base), cfg, tokenizer=tok)
    if start is not None:
        c = base.config
        with torch.no_grad():  # peft's flat (P, L * 2 * Hkv * D) -> groundup's (L, 2, Hkv, P, D)
            model.prefixes["default"].prefix.copy_(prefix_from_flat(start, c.n_layer, c.n_kv_head, c.head_dim))
    return (lambda b: model(b["input_ids"], attention_mask=b["attention_mask"])), list(
        P.trainable_parameters(model).values())


def theirs(hf_dir: Path, projection: bool, start: torch.Tensor | None):
    import peft
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model = peft.get_peft_model(hf, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL,
                                                             prefix_projection=projection, encoder_hidden_size=512))
    if start is not None:
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight.copy_(start)
    return (lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits), [
        p for p in model.parameters() if p.requires_grad]


def main() -> None:
    import tempfile

    import transformers

    from groundup.interop import save_hf
    from groundup.loading import load_pretrained

    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-2, help="the rate groundup.finetune used for prefix tuning")
    args = p.parse_args()
    common.setup(args.threads)
    transformers.logging.set_verbosity_error()
    base, tok = load_pretrained(MODEL)
    data = batches(tok, args.steps)
    c = base.config
    torch.manual_seed(0)
    start = torch.randn(N_VIRTUAL, c.n_layer * 2 * c.n_kv_head * c.head_dim)  # what nn.Embedding starts peft at
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = save_hf(base, tok, Path(tmp) / "hf")
        for name, make in {
            "groundup, direct, N(0,1) start": lambda: ours(base, tok, "direct", start),
            "peft, direct, the same start": lambda: theirs(hf_dir, False, start),
            "groundup, MLP (its init)": lambda: ours(base, tok, "mlp", None),
            "peft, MLP (its init)": lambda: theirs(hf_dir, True, None),
            "groundup, direct, words start": lambda: ours(base, tok, "words", None),
        }.items():
            torch.manual_seed(0)
            forward, params = make()
            runs[name] = curve(forward, params, data, args.lr)
            print(f"{name}: {' '.join(f'{x:.2f}' for x in runs[name][0])}", flush=True)
    shown = [s for s in SHOWN if s < args.steps]
    headers = ["prefix tuning", *[f"loss step {s + 1}" for s in shown], f"mean of last {args.steps // 4}", "s / step"]
    rows = [[name, *[losses[s] for s in shown], sum(losses[-(args.steps // 4):]) / (args.steps // 4), sec]
            for name, (losses, sec) in runs.items()]
    title = (f"{MODEL}: prefix tuning ({N_VIRTUAL} virtual tokens), {args.steps} AdamW steps at lr {args.lr:g}, "
             "batch 8, fp32, the same batches")
    tables = {title: common.show(title, headers, rows)}
    path = common.write_results(common.result_name("prefix_vs_peft", args.tag), tables,
                                {"losses": {k: v[0] for k, v in runs.items()}, "lr": args.lr})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
