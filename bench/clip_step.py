"""CLIP training step: groundup (models.clip.CLIP + the "clip" objective) vs open_clip on the same model and batch.

  1. Parity: open_clip.CLIP built from a custom config (image 64, patch 8, both towers width 128, 4 layers, 4 heads,
     QuickGELU; text context 77, vocab 49408; embed 128), its weights copied into a groundup CLIP of the same shape;
     both must give the same logits on the same batch (atol 1e-4), and still after 3 training steps each (the
     same optimizer on the same parameters), so the timed work is the same computation.
  2. One training step, fp32, 64 images + 64 captions (ClipTokenizer, 77 positions on both sides): forward of both
     towers, symmetric contrastive loss, backward, AdamW (torch foreach; the same groups, lr, betas, decay on both),
     the logit-scale clamp, zero_grad. groundup runs its own objective (train.objectives.clip), optimizer builder
     (train.optim.build_optimizer) and after_optimizer_step hook; open_clip its ClipLoss and the clamp its training
     script applies. Interleaved (A B A B ...), warmup then the median of the timed repeats.
     Rows: open_clip (the anchor); groundup on input_ids alone (what open_clip gets); groundup with the
     attention_mask that ImageTextData batches carry (what `groundup train` feeds the model). Both sides pad the
     captions to 77; groundup's text tower stops at the last column its pooling reads (models/clip.py), open_clip
     runs all 77.
  3. --profile: torch.profiler's top ops of each side's step.

    python bench/clip_step.py [--quick] [--threads 1] [--profile] [--batch 64]

open_clip 3.3.0 imports torchvision; the PyPI torchvision 0.28.0 (the release for torch 2.13) is a CUDA build whose
compiled ops cannot load next to torch 2.13.0+cpu, so `make bench-vision` installs it outside the venv's site-packages
(.venv/anchors, --no-deps) where only this benchmark sees it, and the two op schemas torchvision's import-time
registrations need are declared here first (open_clip's CLIP uses no torchvision op). Installed into the venv
itself, that half-working torchvision breaks `transformers`' image processors for every other test and bench.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import common  # noqa: E402

from groundup.models.clip import CLIP, clip_preset  # noqa: E402
from groundup.tokenizer_clip import ClipTokenizer  # noqa: E402
from groundup.train import objectives  # noqa: E402
from groundup.train.config import TrainConfig  # noqa: E402
from groundup.train.optim import build_optimizer  # noqa: E402

ANCHORS = ROOT / ".venv" / "anchors"  # torchvision for open_clip, kept out of the venv's site-packages
IMAGE, PATCH, WIDTH, LAYERS, HEADS, EMBED, CONTEXT, VOCAB = 64, 8, 128, 4, 4, 128, 77, 49408
TRAIN = TrainConfig(lr=5e-4, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=0.0, warmup_steps=1, max_steps=10)
WORDS = ("a photo of a small red dog on the grass", "two cats asleep on a blue sofa", "a plate of pasta with basil",
         "an old bicycle leaning against a brick wall", "a sailing boat on a calm lake at dawn",
         "a child flying a kite on the beach", "a bowl of ripe oranges", "snow on the mountains above a village")


# --- open_clip ----------------------------------------------------------------------------------------------------
def import_open_clip() -> Any:
    """open_clip, with torchvision from .venv/anchors when it is there. A torchvision whose compiled ops do not
    load (a CUDA wheel beside a CPU torch) fails at import on its fake-kernel registrations for nms / qnms: declare
    those two schemas first, so the pure-Python rest (all open_clip's CLIP uses) imports."""
    if ANCHORS.is_dir() and str(ANCHORS) not in sys.path:
        sys.path.insert(0, str(ANCHORS))
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise SystemExit("bench/clip_step.py needs torchvision for `import open_clip`: .venv/bin/python -m pip install "
                         "-c constraints.txt --no-deps --target .venv/anchors torchvision==0.28.0 "
                         "(make bench-vision does)")
    try:
        torch.ops.load_library(str(Path(spec.origin).parent / "_C.so"))
    except (OSError, RuntimeError):
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_open_clip.lib = lib  # keep the definitions alive
    import open_clip

    return open_clip


def build_open_clip(open_clip: Any) -> nn.Module:
    vision = dict(image_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=LAYERS, head_width=WIDTH // HEADS)
    text = dict(context_length=CONTEXT, vocab_size=VOCAB, width=WIDTH, heads=HEADS, layers=LAYERS)
    return open_clip.CLIP(EMBED, vision, text, quick_gelu=True)


def build_groundup() -> CLIP:
    tower = dict(n_layer=LAYERS, n_head=HEADS, d_model=WIDTH)
    return CLIP(clip_preset("clip-tiny-64", vision=dict(tower), text=dict(tower, block_size=CONTEXT,
                                                                           vocab_size=VOCAB), embed_dim=EMBED))


def open_clip_to_groundup(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip CLIP state dict -> groundup CLIP state dict (fused in_proj split into q/k/v, [width, embed]
    projection matrices transposed into Linear weights, the 1-d CLS / 2-d positions given groundup's shapes)."""
    out: dict[str, torch.Tensor] = {}

    def block(src: str, dst: str) -> None:
        for i in range(LAYERS):
            s, d = f"{src}.resblocks.{i}", f"{dst}.blocks.{i}"
            for kind in ("weight", "bias"):
                for name, part in zip("qkv", state.pop(f"{s}.attn.in_proj_{kind}").chunk(3), strict=True):
                    out[f"{d}.attn.{name}_proj.{kind}"] = part.clone()
                for theirs, ours in (("attn.out_proj", "attn.o_proj"), ("ln_1", "attn_norm"), ("ln_2", "mlp_norm"),
                                     ("mlp.c_fc", "mlp.up_proj"), ("mlp.c_proj", "mlp.down_proj")):
                    out[f"{d}.{ours}.{kind}"] = state.pop(f"{s}.{theirs}.{kind}")

    def norm(src: str, dst: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{dst}.{kind}"] = state.pop(f"{src}.{kind}")

    out["visual.patch_embed.weight"] = state.pop("visual.conv1.weight")
    out["visual.cls_token"] = state.pop("visual.class_embedding").reshape(1, 1, -1)
    out["visual.pos_embed"] = state.pop("visual.positional_embedding")[None]
    norm("visual.ln_pre", "visual.pre_norm")
    block("visual.transformer", "visual")
    norm("visual.ln_post", "visual.norm")
    out["visual_projection.weight"] = state.pop("visual.proj").t().contiguous()
    out["text.embed.tok_emb.weight"] = state.pop("token_embedding.weight")
    out["text.embed.pos_emb.weight"] = state.pop("positional_embedding")
    block("transformer", "text")
    norm("ln_final", "text.norm")
    out["text_projection.weight"] = state.pop("text_projection").t().contiguous()
    out["logit_scale"] = state.pop("logit_scale")
    if state:
        raise RuntimeError(f"open_clip tensors left unmapped: {sorted(state)}")
    return {k: v.detach().clone() for k, v in out.items()}


def open_clip_optimizer(model: nn.Module) -> torch.optim.AdamW:
    """The groups groundup's build_optimizer makes for the same parameters: decay the matrices (dim >= 2, where
    groundup's (1, 1, d) cls_token counts as one), not biases, norm gains or the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 or name == "visual.class_embedding" else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": TRAIN.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=TRAIN.lr, betas=(TRAIN.beta1, TRAIN.beta2), foreach=True)


# --- the batch and the two steps -------------------------------------------------------------------------------
def make_batch(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    captions = [f"{WORDS[i % len(WORDS)]} number {i}" for i in range(n)]
    ids = ClipTokenizer()(captions)  # (n, 77), zero-padded after <end_of_text>
    pixels = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
    return {"pixels": pixels, "input_ids": ids, "attention_mask": (ids != 0).long()}


def open_clip_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    image, text, scale = model(batch["pixels"], batch["input_ids"])  # normalised features, exp(logit_scale)
    return scale * image @ text.t()  # (B_img, B_txt)


def open_clip_step(open_clip: Any, model: nn.Module, opt: torch.optim.Optimizer) -> Callable[[dict], float]:
    loss_fn = open_clip.ClipLoss()

    def step(batch: dict[str, torch.Tensor]) -> float:
        image, text, scale = model(batch["pixels"], batch["input_ids"])
        loss = loss_fn(image, text, scale)
        loss.backward()
        opt.step()
        with torch.no_grad():  # open_clip_train's train_one_epoch, after every step
            model.logit_scale.clamp_(0, math.log(100))
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def groundup_step(model: CLIP, opt: torch.optim.Optimizer, keys: tuple[str, ...]) -> Callable[[dict], float]:
    def step(batch: dict[str, torch.Tensor]) -> float:
        loss, _ = objectives.clip(model, {k: batch[k] for k in keys})
        loss.backward()
        opt.step()
        model.after_optimizer_step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


# --- main --------------------------------------------------------------------------------------------------------
def parity(open_clip: Any, oc: nn.Module, gu: CLIP, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |logit difference| before training and after 3 steps of each side's own training step."""
    with torch.no_grad():
        before = (open_clip_logits(oc, batch) - gu(batch["pixels"], batch["input_ids"])[0]).abs().max().item()
        masked = (open_clip_logits(oc, batch) - gu(batch["pixels"], batch["input_ids"],
                                                   batch["attention_mask"])[0]).abs().max().item()
    oc_step = open_clip_step(open_clip, oc, open_clip_optimizer(oc))
    gu_step = groundup_step(gu, build_optimizer(gu, TRAIN), ("pixels", "input_ids"))
    losses = [(float(oc_step(batch)), float(gu_step(batch))) for _ in range(3)]
    with torch.no_grad():
        after = (open_clip_logits(oc, batch) - gu(batch["pixels"], batch["input_ids"])[0]).abs().max().item()
    loss_gap = max(abs(a - b) for a, b in losses)
    print(f"parity: max |logits diff| {before:.2e} (with attention_mask {masked:.2e}); after 3 steps {after:.2e}; "
          f"max |loss diff| over the steps {loss_gap:.2e}", flush=True)
    ok = max(before, masked) < 1e-4 and after < 1e-3
    if not ok:
        raise SystemExit("parity failed: the two models do not compute the same thing; not timing")
    return {"max_abs_logit_diff": before, "max_abs_logit_diff_with_mask": masked, "after_3_steps": after,
            "max_abs_loss_diff": loss_gap}


Contender = tuple[Callable[[], Any], Callable[[], torch.Tensor]]  # (one training step, its model's logits now)


def contenders(open_clip: Any, batch: dict[str, torch.Tensor]) -> tuple[dict[str, Contender], dict[str, float]]:
    """Each contender trains its own copy of the same weights; every groundup one must give open_clip's logits
    before it is timed."""
    torch.manual_seed(0)
    ref = build_open_clip(open_clip).train()
    state = open_clip_to_groundup(dict(ref.state_dict()))
    with torch.no_grad():
        want = open_clip_logits(ref, batch)
    oc = build_open_clip(open_clip).train()
    oc.load_state_dict(ref.state_dict())
    out: dict[str, Contender] = {"open_clip": (partial(open_clip_step(open_clip, oc, open_clip_optimizer(oc)), batch),
                                               partial(open_clip_logits, oc, batch))}
    ids, masked = ("pixels", "input_ids"), ("pixels", "input_ids", "attention_mask")
    gaps = {}
    for name, keys in (("groundup", ids), ("groundup + attention_mask", masked)):
        m = build_groundup()
        m.load_state_dict(state)
        m.train()
        logits = partial(groundup_logits, m, {k: batch[k] for k in keys})
        gaps[name] = (logits() - want).abs().max().item()
        if gaps[name] > 1e-4:
            raise SystemExit(f"{name}: logits differ from open_clip's by {gaps[name]:.2e}; not timing")
        out[name] = (partial(groundup_step(m, build_optimizer(m, TRAIN), keys), batch), logits)
    print("before training, max |logits - open_clip's|: " + ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()),
          flush=True)
    return out, gaps


def groundup_logits(model: CLIP, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["pixels"], batch["input_ids"], attention_mask=batch.get("attention_mask"))[0]


def trained_alike(runs: dict[str, Contender]) -> dict[str, float]:
    """After the timed run every contender has taken the same steps on the same batch: max |logits - open_clip's|
    then checks that each trained the same way (same gradients, same optimizer), not only that it started alike."""
    with torch.no_grad():
        want = runs["open_clip"][1]()
        gaps = {name: (logits() - want).abs().max().item() for name, (_, logits) in runs.items() if name != "open_clip"}
    print("after the timed steps, max |logits - open_clip's|: " + ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()),
          flush=True)
    return gaps


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(threads=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of each side's step")
    args = p.parse_args()
    common.setup(args.threads)
    open_clip = import_open_clip()
    batch = make_batch(args.batch)

    torch.manual_seed(0)
    oc = build_open_clip(open_clip).train()
    gu = build_groundup().train()
    gu.load_state_dict(open_clip_to_groundup(dict(oc.state_dict())))
    check = parity(open_clip, oc, gu, batch)

    runs, check["contenders_before_training"] = contenders(open_clip, batch)
    fns = {name: step for name, (step, _) in runs.items()}
    warmup, repeat = (1, 3) if args.quick else (2, 12)
    wall, cpu = common.interleaved(fns, warmup, repeat)
    rows = []
    for name in fns:
        t = statistics.median(wall[name])
        rows.append([name, 1 / t, args.batch / t, t * 1e3, common.spread(wall[name]),
                     common.speedup(wall["open_clip"], wall[name]), common.speedup(cpu["open_clip"], cpu[name])])
    title = (f"CLIP training step, fp32, batch {args.batch} (images {IMAGE}px patch {PATCH}, captions 77 tokens), "
             f"towers d{WIDTH} L{LAYERS} H{HEADS}, {args.threads} thread(s)")
    headers = ["contender", "steps/s", "images/s", "ms/step", "spread", "x open_clip (wall)", "x open_clip (cpu)"]
    tables = {title: common.show(title, headers, rows)}
    check["contenders_after_timed_steps"] = trained_alike(runs)
    if args.profile:  # after the check: profiling adds steps to the two it profiles
        common.profile_ops({k: fns[k] for k in ("open_clip", "groundup")}, rows=22)

    longest = int((batch["input_ids"] == 49407).int().argmax(dim=1).max()) + 1  # <start_of_text> .. <end_of_text>
    extra = {"parity": check, "open_clip": open_clip.__version__, "batch": args.batch, "warmup": warmup,
             "repeat": repeat, "text_positions": CONTEXT, "longest_caption_tokens": longest}
    path = common.write_results(common.result_name("clip_step", args.tag), tables, extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
