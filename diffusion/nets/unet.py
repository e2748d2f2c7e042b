"""A small U-Net for 16x16 images, conditioned on the noise level and an optional class.

The layout follows Ho et al. 2020 / Dhariwal & Nichol 2021 (residual blocks with group norm,
the embedding injected as a per-channel scale and shift, self-attention at low resolution),
cut down to the size of the DeepLearning.AI course's context U-Net. The network is the raw
function F of Karras et al. 2022: it never sees sigma directly, only ``c_noise`` from the
schedule, and its output is interpreted by the objective's preconditioning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffusion.core.errors import ConfigError


class FourierEmbedding(nn.Module):
    """Sinusoidal features of a scalar noise level, frequencies spaced geometrically.

    ``c_noise`` is O(1) for every schedule (t/T, continuous t, or log(sigma)/4), so the
    frequencies span 1..max_freq rather than the 1/10000 range used for integer timesteps.
    """

    def __init__(self, dim: int, max_freq: float = 1000.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the embedding applied as scale and shift (FiLM) between them."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels, computed in float32 (fp16 softmax overflows)."""

    def __init__(self, channels: int, groups: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        with torch.autocast(x.device.type, enabled=False):
            out = F.scaled_dot_product_attention(
                q.transpose(-1, -2).float(), k.transpose(-1, -2).float(), v.transpose(-1, -2).float()
            )
        out = out.transpose(-1, -2).reshape(b, c, h, w).to(x.dtype)
        return x + self.proj(out)


class UNet(nn.Module):
    """U-Net F(x, c_noise, label) -> image-shaped output.

    Args:
        base_channels: channels at full resolution.
        channel_mult: channel multiplier per resolution level; each level after the first halves
            the resolution, so the image size must be divisible by 2 ** (len(channel_mult) - 1).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: resolutions (in pixels) that get a self-attention layer.
        num_classes: number of context classes; 0 for an unconditional model. Index
            ``num_classes`` is the learned null class used for classifier-free guidance.
    """

    def __init__(
        self,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] = (4,),
        num_classes: int = 0,
        image_size: int = 16,
        in_channels: int = 3,
        dropout: float = 0.0,
        norm_groups: int = 8,
    ):
        super().__init__()
        levels = len(channel_mult)
        if image_size % 2 ** (levels - 1):
            raise ConfigError(
                f"image size {image_size} is not divisible by the U-Net's down-sampling factor "
                f"{2 ** (levels - 1)} (channel_mult has {levels} levels); use fewer levels in network.channel_mult"
            )
        if any(base_channels * m % norm_groups for m in channel_mult):
            raise ConfigError(
                f"network.base_channels={base_channels} times channel_mult={list(channel_mult)} must be divisible "
                f"by network.norm_groups={norm_groups}"
            )
        self.num_classes = num_classes
        self.image_size = image_size
        emb_dim = 4 * base_channels
        self.time_embed = nn.Sequential(
            FourierEmbedding(base_channels), nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None

        block = lambda c_in, c_out: ResBlock(c_in, c_out, emb_dim, norm_groups, dropout)  # noqa: E731
        attn = lambda c: SelfAttention(c, norm_groups)  # noqa: E731

        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, res = [base_channels], base_channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([block(ch, base_channels * mult)]))
                ch = base_channels * mult
                if res in attn_resolutions:
                    self.down[-1].append(attn(ch))
                skips.append(ch)
            if level < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2

        self.mid = nn.ModuleList([block(ch, ch), attn(ch), block(ch, ch)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([block(ch + skips.pop(), base_channels * mult)]))
                ch = base_channels * mult
                if res in attn_resolutions:
                    self.up[-1].append(attn(ch))
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]))
                res *= 2

        self.out = nn.Sequential(nn.GroupNorm(norm_groups, ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        # Zero-init the output so a fresh model predicts 0: the preconditioned denoiser then starts
        # at c_skip * x, a sensible baseline for every objective.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def embed(self, c_noise: Tensor, labels: Tensor | None) -> Tensor:
        emb = self.time_embed(c_noise)
        if self.class_embed is not None:
            if labels is None:
                labels = torch.full_like(c_noise, self.num_classes, dtype=torch.long)
            emb = emb + self.class_embed(labels)
        return F.silu(emb)

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(c_noise, labels)
        h = self.stem(x)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(layers, h, emb)
        # The output layer in float32 even under autocast: its result is the prediction itself, and bf16's
        # 8-bit mantissa there showed in the FID of an eps model (BENCHMARKS.md); it is a small layer.
        with torch.autocast(x.device.type, enabled=False):
            return self.out(h.float())

    @staticmethod
    def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h
