"""Vision-language models in use: build one from a base LM and a vision encoder by name, save and load what
trained (the connector alone: the base and the encoder are rebuilt from their own files), and answer questions
about images.

    <dir>/vision_lm.json         {"base": ..., "vision": ..., "config": VisionLMConfig}
    <dir>/connector.safetensors  the trained tensors (resampler + gated cross-attention, or the projector;
                                 the two new token embeddings)
    <dir>/tokenizer.json         the base model's tokenizer (with its chat template)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import VisionLMConfig
from .data.vlm import VLMExample, encode_text, image_features
from .generate import GenerationConfig, generate
from .models.flamingo import IMAGE_TOKEN, VisionLM
from .models.vit import ViT
from .tokenizer import Tokenizer

CONFIG_FILE, WEIGHTS_FILE = "vision_lm.json", "connector.safetensors"


def is_vision_lm_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def load_vision_encoder(name: str) -> ViT:
    """An image encoder by name: a packaged one (dinov2-vits14), a ViT / DINOv2 folder, or a CLIP checkpoint (its
    image tower)."""
    from .loading import load_pretrained
    from .models.clip import CLIP

    try:
        model, _ = load_pretrained(name)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"vision={name!r}: {e}") from None
    if isinstance(model, CLIP):
        model = model.visual
    if not isinstance(model, ViT):
        raise ValueError(f"vision={name!r} is a {type(model).__name__}, not an image encoder; use dinov2-vits14, a "
                         "ViT / DINOv2 folder, or a CLIP checkpoint")
    return model


def build_vision_lm(base: str, vision: str, cfg: VisionLMConfig) -> tuple[VisionLM, Tokenizer]:
    """A fresh connector (seeded by the caller) between the base decoder and the vision encoder, both frozen."""
    from .apps.by_arch import require_arch, require_tokenizer
    from .loading import load_pretrained

    lm, tok = load_pretrained(base)
    require_arch(lm, "finetune")
    return VisionLM(lm, load_vision_encoder(vision), cfg), require_tokenizer(tok, base, "finetune")


def save_vision_lm(model: VisionLM, out_dir: str | os.PathLike, base: str, vision: str,
                   tokenizer: Tokenizer) -> Path:
    """Write the trained connector atomically (a staging folder renamed into place)."""
    from .train.checkpoint import staging_dir, usual_modes

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    tensors = {k: p.detach().cpu().contiguous() for k, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    (tmp / CONFIG_FILE).write_text(json.dumps({"base": base, "vision": vision,
                                               "config": model.vlm_config.to_dict()}, indent=2))
    tokenizer.save(str(tmp))
    usual_modes(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_vision_lm(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[VisionLM, Tokenizer]:
    """A saved vision-language model (eval mode, in dtype): its base and encoder from their own files, its
    connector here."""
    from .tokenizer import load_tokenizer

    path = Path(path)
    if not is_vision_lm_dir(path):
        raise FileNotFoundError(f"{path} holds no {CONFIG_FILE}: not a vision-language model saved by groundup")
    meta = json.loads((path / CONFIG_FILE).read_text())
    cfg = VisionLMConfig.from_dict(meta["config"])
    model, _ = build_vision_lm(meta["base"], meta["vision"], cfg)
    state = load_file(str(path / WEIGHTS_FILE))
    own = {k for k, p in model.named_parameters() if p.requires_grad}
    if set(state) != own:
        raise ValueError(f"{path}: the saved connector does not fit {meta['base']} + {meta['vision']} with its "
                         f"config (missing {sorted(own - set(state))[:3]}, unexpected {sorted(set(state) - own)[:3]})")
    model.load_state_dict(state, strict=False)
    return model.to(dtype).eval(), load_tokenizer(path)


# --- questions about images -----------------------------------------------------------------------------------
def encode_prompt(model: VisionLM, tokenizer: Tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """A conversation ending with a user turn -> the prompt's ids, ready to generate the answer; <image> markers
    become the model's image tokens."""
    from .chat import apply_chat_template

    template = tokenizer.chat_template
    if template:
        token = lambda i: (tokenizer.id_to_token(i) or "") if i is not None else ""
        text = apply_chat_template(template, list(messages), True, token(tokenizer.bos_id), token(tokenizer.eos_id))
    else:
        text = "".join(m["content"] + "\n" for m in messages)
    return encode_text(model, tokenizer, text)


def stacked_media(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's image features (n_i, 1 + N, d) -> (B, max n_i, 1 + N, d) zero-padded, and the counts (B,)."""
    shape = next((f.shape[1:] for f in features if len(f)), None)
    if shape is None:
        return torch.zeros(len(features), 1, 1, 1), torch.zeros(len(features), dtype=torch.long)
    media = torch.zeros(len(features), max(1, max(len(f) for f in features)), *shape)
    for b, f in enumerate(features):
        media[b, : len(f)] = f
    return media, torch.tensor([len(f) for f in features])


def answer(model: VisionLM, tokenizer: Tokenizer, conversations: Sequence[VLMExample],
           cfg: GenerationConfig, batch_size: int = 16, known: dict | None = None) -> list[str]:
    """The model's reply to each conversation (its messages end with a user turn; its images in marker order).
    known: image features already computed by this encoder, by path (data.vlm.image_features)."""
    cfg = dataclasses.replace(cfg, eos_id=tokenizer.eos_id if cfg.eos_id is None else cfg.eos_id)
    out: list[str] = []
    for i in range(0, len(conversations), batch_size):
        chunk = conversations[i: i + batch_size]
        prompts = [encode_prompt(model, tokenizer, ex.messages) for ex in chunk]
        features, rows = image_features(chunk, model, known)
        media, counts = stacked_media([features[r] if r else torch.empty(0) for r in rows])
        with model.images(media, counts) if int(counts.sum()) else contextlib.nullcontext():
            rows = generate(model, prompts, cfg)
        out += [tokenizer.decode([t for t in r if t != cfg.eos_id]) for r in rows]
    return out


def questions(examples: Sequence[VLMExample]) -> list[tuple[VLMExample, str]]:
    """Each example cut before its last answer: (the conversation to answer, the reference answer)."""
    out = []
    for ex in examples:
        last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
        shown = ex.messages[:last]
        n_images = sum(m["content"].count(IMAGE_TOKEN) for m in shown)
        out.append((dataclasses.replace(ex, messages=shown, images=ex.images[:n_images]), ex.messages[last]["content"]))
    return out


__all__ = ["answer", "build_vision_lm", "encode_prompt", "is_vision_lm_dir", "load_vision_encoder", "load_vision_lm",
           "questions", "save_vision_lm", "stacked_media"]
