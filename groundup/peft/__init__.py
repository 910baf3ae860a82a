"""Parameter-efficient fine-tuning: LoRA, IA3, BitFit, prompt tuning and prefix tuning behind one API.

    model = inject(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    print(summary(model))                      # trainable params: ... || all params: ... || trainable%: ...
    ... train(model, ...) ...                  # only the adapter trains
    save_adapter(model, "runs/lora")           # groundup format; HF PEFT layout: groundup.interop.peft_format
    merge(model)                               # fold into the weights (unmerge restores them exactly)

LoRA / IA3 / BitFit swap modules in place (wrappers hold `base_layer`); prompt and prefix tuning wrap the
model (PromptModel / PrefixModel) and enter through its own inputs (inputs_embeds=, the KV cache).
"""

from .api import (
    METHODS,
    PeftState,
    adapter_names,
    adapter_rows,
    count_parameters,
    delete_adapter,
    disable,
    inject,
    merge,
    merge_and_unload,
    peft_state,
    set_adapter,
    summary,
    trainable_parameters,
    unmerge,
)
from .bitfit import BiasAdapter
from .config import (
    BitFitConfig,
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftError,
    PrefixTuningConfig,
    PromptTuningConfig,
)
from .ia3 import IA3Linear
from .lora import LoraLinear
from .prefix import PrefixEncoder, PrefixModel
from .prompt import PromptEmbedding, PromptModel, nearest_tokens
from .saving import fingerprint, load_adapter, save_adapter

__all__ = [
    "METHODS", "BiasAdapter", "BitFitConfig", "IA3Config", "IA3Linear", "LoraConfig", "LoraLinear", "PeftConfig",
    "PeftError", "PeftState", "PrefixEncoder", "PrefixModel", "PrefixTuningConfig", "PromptEmbedding", "PromptModel",
    "PromptTuningConfig", "adapter_names", "adapter_rows", "count_parameters", "delete_adapter", "disable",
    "fingerprint", "inject", "load_adapter", "merge", "merge_and_unload", "nearest_tokens", "peft_state",
    "save_adapter", "set_adapter", "summary", "trainable_parameters", "unmerge",
]
