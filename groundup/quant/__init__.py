"""Weight-only quantization (int8, int4, NF4) as a module swap: quantize(model, fmt), QuantLinear, and the
pure quantize / dequantize functions of each format. QLoRA = quantize(model, "nf4") then peft.inject(...)."""

from .api import QuantReport, dequantize, quantize, rebuild_quantized, tensor_bytes
from .formats import FORMATS, QuantError, dequantize_weight, quantize_weight
from .linear import QuantLinear

__all__ = ["quantize", "dequantize", "rebuild_quantized", "QuantReport", "QuantLinear", "QuantError", "FORMATS",
           "quantize_weight", "dequantize_weight", "tensor_bytes"]
