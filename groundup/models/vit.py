"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

    pixels (B, C, H, W) ─> Conv2d(kernel = stride = patch) ─> patches (B, N, d), N = (H / p) x (W / p)
        [CLS] + patches + positions (learned; bicubically resized when the grid differs from training's)
        (─> LayerNorm: CLIP's ln_pre, VisionConfig.pre_norm)
        ─> Block x n_layer (groundup.nn, bidirectional, pre-norm; LayerScale for DINOv2) ─> LayerNorm
        ─> features (B, 1 + N, d) ─> pool: the CLS token or the patches' mean (B, d) ─> head (B, n_class)

The blocks are the text models' own (VisionConfig.block_config()); only the patch embedding and the pooling
are new.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from ..nn import Block, build_norm


class ViT(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.patch_embed = nn.Conv2d(cfg.n_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size,
                                     bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid ** 2, d))  # CLS first, then the grid row-major
        block_cfg = cfg.block_config()
        self.pre_norm = build_norm(block_cfg) if cfg.pre_norm else None  # CLIP's ln_pre; None: no key, no call
        self.blocks = nn.ModuleList(Block(block_cfg, causal=False) for _ in range(cfg.n_layer))
        self.norm = build_norm(block_cfg)
        self.pooler = nn.Linear(d, d) if cfg.hf_pooler else None
        self.head = nn.Linear(d, cfg.n_class) if cfg.n_class else None
        self._init()

    def _init(self) -> None:
        """timm's ViT start: truncated N(0, 0.02) for weights and positions, zero biases, a near-zero CLS."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2 and name != "cls_token":
                nn.init.trunc_normal_(p, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def positions(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1, 1 + grid_h * grid_w, d): the learned positions, the patch grid resized bicubically (in fp32,
        align_corners=False, as Hugging Face's Dinov2 and ViT do) when it differs from the training grid."""
        g = self.config.grid
        if (grid_h, grid_w) == (g, g):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = grid.shape[-1]
        grid = grid.reshape(1, g, g, d).permute(0, 3, 1, 2)  # (1, d, g, g)
        grid = F.interpolate(grid.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        grid = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, d)
        return torch.cat([cls, grid], dim=1)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised hidden states (B, 1 + N, d): the CLS token, then the patches row-major."""
        if pixels.dim() != 4 or pixels.shape[1] != self.config.n_channels:
            raise ValueError(f"ViT expects pixels (B, {self.config.n_channels}, H, W); got {tuple(pixels.shape)} "
                             "(prepare images with groundup.vision.preprocess)")
        p = self.config.patch_size
        H, W = pixels.shape[-2:]
        if H % p or W % p:
            raise ValueError(f"image {H}x{W} is not a multiple of the patch size {p}; resize or crop it to a multiple "
                             f"(e.g. {H // p * p}x{W // p * p}; groundup.vision.preprocess does)")
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))  # (B, d, H / p, W / p)
        B, _, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, N, d)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.positions(gh, gw)  # (B, 1 + N, d)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, 0] if self.config.pool == "cls" else features[:, 1:].mean(dim=1)  # (B, d)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_class) with a head, else the pooled features (B, d)."""
        pooled = self.pool(self.features(pixels))
        return self.head(pooled) if self.head is not None else pooled
