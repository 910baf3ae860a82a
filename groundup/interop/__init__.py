"""Other on-disk formats. Foreign state-dict names live only here, as explicit key-map tables.

    hf.py         load_hf / save_hf: Hugging Face directories (GPT-2, Llama, Mistral, BERT)
    hub.py        from_hub: a Hub download (offline: fails fast, naming the alternatives)
    hf_keys.py    the per-family key maps
    hf_config.py  config.json <-> ModelConfig
    gguf.py       load_gguf: llama.cpp's single-file format (weights, tokenizer, chat template)
"""

from .gguf import GGUFError, load_gguf
from .hf import load_hf, read_safetensors, save_hf
from .hf_config import SUPPORTED_MODEL_TYPES, config_from_hf, config_to_hf, hf_family
from .hf_keys import HFFormatError, KeyRule, bert_rules, gpt2_rules, groundup_to_hf, hf_to_groundup, llama_rules
from .hub import HubUnavailableError, from_hub

__all__ = [
    "GGUFError", "load_gguf", "HFFormatError", "HubUnavailableError", "KeyRule", "SUPPORTED_MODEL_TYPES",
    "bert_rules", "config_from_hf",
    "config_to_hf", "from_hub", "gpt2_rules", "groundup_to_hf", "hf_family", "hf_to_groundup", "llama_rules",
    "load_hf", "read_safetensors", "save_hf",
]
