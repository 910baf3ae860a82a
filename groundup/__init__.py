"""groundup: large language models from the ground up, carried all the way to real use."""

from .lazy import lazy_exports

__version__ = "0.1.0"

__all__ = lazy_exports(__name__, {
    ".chat": "Chat apply_chat_template",
    ".config": "ModelConfig preset",
    ".generate": "GenerationConfig generate generate_text stream_text",
    ".generate_seq2seq": "translate_text",
    ".loading": "load_pretrained",
    ".models": "build_model",
    ".quant": "quantize",
    ".serve.cascade": "Cascade",
})
