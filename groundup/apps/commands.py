"""The model commands without a module of their own: generate, eval, convert, quantize, embed. Each takes its job
(groundup.jobs; the job's docstring says what the command does)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..data import read_text_corpus
from ..data.prompt_format import carry_prompt_format
from ..embed import embed_texts
from ..eval import text_perplexity
from ..generate import GenerationConfig, stream_text
from ..jobs.files import ConvertJob, QuantizeJob
from ..jobs.use import EmbedJob, EvalJob, GenerateJob
from ..loading import load_pretrained
from ..quant import QuantReport, quantize
from ..quant.formats import check_format
from ..train.checkpoint import save_checkpoint
from .by_arch import eval_for_arch, generate_for_arch, require_arch, require_tokenizer
from .export import check_out, float_weights, out_dtype, write_model
from .inference import announced_prompt_format, for_decoding, load_for_inference


def generate_cli(job: GenerateJob) -> None:
    model, tok = load_for_inference(job.model, job.dtype)
    require_arch(model, "generate", ("decoder", "seq2seq"))
    require_tokenizer(tok, job.model, "generate")
    model = for_decoding(model, job.adapter)
    cfg = GenerationConfig(
        max_new_tokens=job.max_new_tokens, temperature=job.temperature, top_k=job.top_k, top_p=job.top_p,
        seed=job.seed, stop=tuple(job.stop), num_beams=job.num_beams,
    )
    if generate_for_arch(model, tok, job.prompt, cfg):  # an encoder-decoder printed the target of the source
        return
    fmt = announced_prompt_format(job.model, job.adapter, job.raw_prompt)
    prompt = fmt.apply(job.prompt, tok) if fmt is not None else job.prompt
    sys.stdout.write(prompt)
    for piece in stream_text(model, tok, prompt, cfg):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def eval_cli(job: EvalJob) -> dict[str, float]:
    if not job.data:
        raise ValueError("--data is missing; give a text file, e.g. --data=held_out.txt")
    model, tok = load_for_inference(job.model, job.dtype)
    require_tokenizer(tok, job.model, "eval")
    if (other := eval_for_arch(model, tok, job.data)) is not None:  # seq2seq and encoder models
        return other
    result = text_perplexity(model, tok, read_text_corpus(Path(job.data)), job.stride)
    print(
        f"{job.data}: {result['tokens']} tokens, loss {result['nll']:.4f} nats/token, perplexity {result['ppl']:.3f}, "
        f"{result['nats_per_char']:.4f} nats/char ({result['bits_per_char']:.4f} bits/char)"
    )
    return result


def convert_cli(job: ConvertJob) -> Path:
    if not job.model or not job.out:
        raise ValueError("convert needs --model (what to read) and --out (the directory to write)")
    out = check_out(job.out, job.overwrite)
    dtype = out_dtype(job.dtype)
    model, tok = load_pretrained(job.model, dtype)
    written = write_model(float_weights(model, job.dequantize, job.to, job.model), tok, out, job.to, dtype)
    carry_prompt_format(job.model, written)
    print(f"wrote {written}")
    return written


def quantize_cli(job: QuantizeJob) -> QuantReport:
    if not job.model or not job.out:
        raise ValueError("quantize needs --model (what to read) and --out (the directory to write)")
    check_format(job.to)
    model, tok = load_for_inference(job.model, job.dtype)
    report = quantize(model, job.to, job.group_size, head=job.head)
    written = save_checkpoint(job.out, model, tokenizer=tok)
    carry_prompt_format(job.model, written)
    print(f"{report.summary()}\nwrote {written}")
    return report


def embed_cli(job: EmbedJob) -> Path:
    if job.images:
        return embed_images_cli(job)
    lines = read_text_corpus(Path(job.input)).splitlines() if job.input else []  # one row per line, blank ones too
    if not lines:
        raise ValueError("--input is missing or has no lines; give a text file with one sentence per line")
    model, tok = load_pretrained(job.model)
    vectors = embed_texts(model, require_tokenizer(tok, job.model, "embed"), lines, job.batch_size).numpy()
    np.save(job.out, vectors)
    print(f"wrote {job.out}: {vectors.shape[0]} embeddings of size {vectors.shape[1]}")
    return Path(job.out)


def embed_images_cli(job: EmbedJob) -> Path:
    """Image embeddings: a CLIP's image embedding or a ViT's pooled features, L2-normalised; <out>.txt lists the
    files in row order."""
    import torch

    from ..models.clip import CLIP
    from ..nn.packed_linear import pack_for_inference
    from ..vision.preprocess import image_files, load_image, preprocess, spec_at
    from .classify_images import image_features, require_vit

    if job.input:
        raise ValueError("give --input (text lines) or --images, not both")
    files = image_files(job.images)
    model, _ = load_pretrained(job.model)
    vit = model.visual if isinstance(model, CLIP) else require_vit(model, job.model, "embed --images")
    pack_for_inference(model, many_rows=True)
    spec = spec_at(vit.config.preprocess, vit.config.image_size)
    pixels = preprocess([load_image(f, spec.channels) for f in files], spec)
    with torch.inference_mode():
        if isinstance(model, CLIP):
            vectors = torch.cat([model.encode_image(pixels[i:i + job.batch_size])
                                 for i in range(0, len(pixels), job.batch_size)]).float()
        else:
            vectors = torch.nn.functional.normalize(image_features(vit, pixels, job.batch_size), dim=-1)
    np.save(job.out, vectors.numpy())
    listing = Path(job.out).with_suffix(".txt")
    listing.write_text("".join(f"{f}\n" for f in files))
    print(f"wrote {job.out}: {len(files)} image embeddings of size {vectors.shape[1]} (files in order: {listing})")
    return Path(job.out)
