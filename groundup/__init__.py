"""groundup: large language models from the ground up, carried all the way to real use."""

from .chat import Chat, apply_chat_template
from .config import ModelConfig, preset
from .generate import GenerationConfig, generate, generate_text, stream_text
from .generate_seq2seq import translate_text
from .loading import load_pretrained
from .models import build_model
from .quant import quantize
from .serve.cascade import Cascade

__version__ = "0.1.0"

__all__ = [
    "ModelConfig", "preset", "build_model", "load_pretrained", "GenerationConfig", "generate", "generate_text",
    "stream_text", "translate_text", "Chat", "apply_chat_template", "quantize", "Cascade",
]
