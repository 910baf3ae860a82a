"""Parameter-efficient fine-tuning: LoRA, IA3, BitFit, prompt tuning and prefix tuning behind one API.

    model = inject(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    print(summary(model))                      # trainable params: ... || all params: ... || trainable%: ...
    ... train(model, ...) ...                  # only the adapter trains
    save_adapter(model, "runs/lora")           # groundup format; HF PEFT layout: groundup.interop.peft_format
    merge(model)                               # fold into the weights (unmerge restores them exactly)

LoRA / IA3 / BitFit swap modules in place (wrappers hold `base_layer`); prompt and prefix tuning wrap the
model (PromptModel / PrefixModel) and enter through its own inputs (inputs_embeds=, the KV cache).
"""

from groundup.lazy import lazy_exports

__all__ = lazy_exports(__name__, {
    ".api": "METHODS PeftState adapter_names adapter_rows count_parameters delete_adapter disable inject merge "
            "merge_and_unload peft_state set_adapter summary trainable_parameters unmerge",
    ".bitfit": "BiasAdapter",
    ".config": "BitFitConfig IA3Config LoraConfig PeftConfig PeftError PrefixTuningConfig PromptTuningConfig",
    ".ia3": "IA3Linear",
    ".lora": "LoraLinear",
    ".prefix": "PrefixEncoder PrefixModel",
    ".prompt": "PromptEmbedding PromptModel nearest_tokens",
    ".saving": "fingerprint load_adapter save_adapter",
})
