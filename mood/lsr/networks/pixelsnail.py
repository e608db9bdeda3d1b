"""PixelSNAIL prior over VQ-VAE code grids (the original method's ``nets_AR.PixelSNAIL``).

Every layer is causal in raster order: the logits at grid position (r, c) depend only on codes at
strictly earlier positions. The network also accepts the first ``h < L`` rows of a grid and returns
exactly the logits those rows have in the full grid (constant planes are cropped, never rebuilt),
which lets restoration evaluate only the rows it needs.

Shapes: codes (B, h, L) int64 with h <= L, coord (B, 1), logits (B, K, h, L).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...config import PriorConfig


class WNConv2d(nn.Module):
    """Weight-normalised convolution; kernels with a side of 2 are cropped to stay causal."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], stride: int = 1) -> None:
        super().__init__()
        base = nn.Conv2d(c_in, c_out, kernel)
        self.v = nn.Parameter(base.weight.detach().clone())
        self.g = nn.Parameter(base.weight.detach().flatten(1).norm(dim=1).view(-1, 1, 1, 1))
        self.bias = nn.Parameter(base.bias.detach().clone())
        self.kernel = kernel
        self.stride = stride

    def weight(self) -> torch.Tensor:
        return self.g * self.v / self.v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel
        out = F.conv2d(x, self.weight(), self.bias, self.stride, (kh // 2, kw // 2))
        # A side of 2 padded by 1 yields one extra row/column; dropping the last one keeps only
        # the taps above and to the left of each output position.
        if kh == 2:
            out = out[:, :, :-1]
        if kw == 2:
            out = out[:, :, :, :-1]
        return out


class WNLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        base = nn.Linear(d_in, d_out)
        self.v = nn.Parameter(base.weight.detach().clone())
        self.g = nn.Parameter(base.weight.detach().norm(dim=1, keepdim=True))
        self.bias = nn.Parameter(base.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.g * self.v / self.v.norm(dim=1, keepdim=True), self.bias)


class MaskedConv2d(nn.Module):
    """Square convolution that sees rows above the centre and the centre row up to the centre.

    Type "A" excludes the centre tap, type "B" includes it. Only the visible taps are parameters
    (row-major order), as in the original, so parameter counts match it.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, mask_type: str, stride: int = 1) -> None:
        super().__init__()
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', not {mask_type!r}")
        self.n_taps = kernel * (kernel // 2) + kernel // 2 + (mask_type == "B")
        self.weight = nn.Parameter(torch.randn(c_out, c_in, self.n_taps) * 0.01)
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        w = F.pad(self.weight, (0, k * k - self.n_taps)).view(*self.weight.shape[:2], k, k)
        return F.conv2d(x, w, self.bias, self.stride, k // 2)

    def code_table(self) -> torch.Tensor:
        """(n_taps * (n_codes + 1), C_out): per visible tap, each code's kernel column, then a zero
        row (the padding's); :meth:`of_codes` sums its rows."""
        return F.pad(self.weight.permute(2, 1, 0), (0, 0, 0, 1)).reshape(-1, self.weight.shape[0])

    def of_codes(self, codes: torch.Tensor, n_codes: int, last_row: bool = False,
                 table: torch.Tensor | None = None) -> torch.Tensor:
        """This convolution of ``F.one_hot(codes, n_codes)`` without the one-hot planes.

        Each output is the bias plus, per visible tap, the kernel column of the code under it: one
        ``embedding_bag`` sum instead of a convolution over ``n_codes`` input channels that are all
        zero but one (the prior's first layer: an eighth of the time, forward and backward, and
        the same numbers). A code equal to ``n_codes`` reads as zeros, like the padding around the
        grid. Codes (B, h, L) -> (B, C_out, h, L), or (B, C_out, 1, L) for the last row only.
        ``table``: :meth:`code_table`, when the caller evaluates many times with the same weights.
        """
        if self.stride != 1 or self.weight.shape[1] != n_codes:
            raise ValueError("of_codes needs stride 1 and one input channel per code")
        k, p = self.kernel, self.kernel // 2
        b, h, w = codes.shape
        table = self.code_table() if table is None else table
        padded = F.pad(codes, (p, p, p, 0), value=n_codes)  # visible taps never reach below
        top = h - 1 if last_row else 0
        taps = [padded[:, top + t // k: h + t // k, t % k: t % k + w] + t * (n_codes + 1) for t in range(self.n_taps)]
        out = F.embedding_bag(torch.stack(taps, -1).reshape(-1, self.n_taps), table, mode="sum")
        return (out.view(b, h - top, w, -1) + self.bias).permute(0, 3, 1, 2)


class GatedResBlock(nn.Module):
    """ELU -> WNConv -> (+ aux) -> ELU -> dropout -> WNConv(2C) -> GLU, added to the input.

    ``cond`` (B, 1, h, L) is concatenated to the input of the first convolution.
    """

    def __init__(self, channels: int, kernel: tuple[int, int], cond_channels: int = 0,
                 aux_channels: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_in = WNConv2d(channels + cond_channels, channels, kernel)
        self.aux = WNConv2d(aux_channels, channels, (1, 1)) if aux_channels else None
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_out = WNConv2d(channels, 2 * channels, kernel)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None,
                aux: torch.Tensor | None = None) -> torch.Tensor:
        h = x if cond is None else torch.cat([x, cond], dim=1)
        h = self.conv_in(F.elu(h))
        if self.aux is not None:
            h = h + self.aux(F.elu(aux))
        h = self.conv_out(self.dropout(F.elu(h)))
        return x + F.glu(h, dim=1)


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift rows down by one (zero first row): row r then carries what row r - 1 saw."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


class CausalAttention(nn.Module):
    """Single-head attention in which each position attends to strictly earlier positions."""

    def __init__(self, channels: int, key_size: int) -> None:
        super().__init__()
        self.query_res = GatedResBlock(channels, (1, 1))
        self.key_res = GatedResBlock(channels, (1, 1))
        self.value_res = GatedResBlock(channels, (1, 1))
        self.query = WNLinear(channels, key_size)
        self.key = WNLinear(channels, key_size)
        self.value = WNLinear(channels, channels)
        self.key_size = key_size

    def forward(self, query_in: torch.Tensor, key_in: torch.Tensor) -> torch.Tensor:
        b, c, h, w = query_in.shape
        n = h * w
        q = self.query(self.query_res(query_in).flatten(2).transpose(1, 2))  # (B, n, key)
        k = self.key(self.key_res(key_in).flatten(2).transpose(1, 2))  # (B, n, key)
        v = self.value(self.value_res(key_in).flatten(2).transpose(1, 2))  # (B, n, C)
        logits = q @ k.transpose(1, 2) / math.sqrt(self.key_size)  # (B, n, n)
        earlier = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)
        attn = logits.masked_fill(~earlier, float("-inf")).softmax(-1)
        # The first position has nothing to attend to: its all -inf row gives NaN, which is zeroed.
        attn = attn.nan_to_num(0.0)
        return (attn @ v).transpose(1, 2).reshape(b, c, h, w)


class PixelBlock(nn.Module):
    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        c, p, ds = cfg.channels, cfg.dropout, cfg.attention_downsample
        self.v_stack = nn.ModuleList(GatedResBlock(c, (2, 3), 1, 0, p) for _ in range(cfg.n_res_blocks))
        self.h_stack = nn.ModuleList(GatedResBlock(c, (2, 2), 1, c, p) for _ in range(cfg.n_res_blocks))
        self.key_conv = MaskedConv2d(2 * c + 2, c, 5, "B", stride=ds)
        self.query_conv = MaskedConv2d(c + 2, c, 5, "B", stride=ds)
        self.attention = CausalAttention(c, cfg.key_size)
        self.upsample = nn.ConvTranspose2d(c, c, ds, stride=ds)
        self.out = GatedResBlock(c, (1, 1), 0, c, p)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        v = h = x
        for v_res, h_res in zip(self.v_stack, self.h_stack):
            v = v_res(v, cond)
            h = h_res(h, cond, aux=down_shift(v))
        key_in = F.elu(self.key_conv(torch.cat([x, h, background], dim=1)))
        query_in = F.elu(self.query_conv(torch.cat([h, background], dim=1)))
        a = self.upsample(F.elu(self.attention(query_in, key_in)))
        return self.out(h, aux=a[:, :, : x.shape[2], : x.shape[3]])


class PixelSNAIL(nn.Module):
    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        c, n = config.channels, config.latent_size
        self.first = MaskedConv2d(config.n_codes, c, config.first_kernel, "A")
        self.blocks = nn.ModuleList(PixelBlock(config) for _ in range(config.n_blocks))
        self.head_up = nn.ConvTranspose2d(c, c, 1)
        self.head_out = WNConv2d(c, config.n_codes, (1, 1))
        pos = (torch.arange(n, dtype=torch.float32) - n / 2) / n
        background = torch.stack([pos.view(n, 1).expand(n, n), pos.view(1, n).expand(n, n)])
        self.register_buffer("background", background.unsqueeze(0), persistent=False)

    def forward(self, codes: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, L) of the first h grid rows and positions (B, 1) -> logits (B, K, h, L)."""
        b, h, w = codes.shape
        dtype = self.head_up.weight.dtype
        background = self.background[:, :, :h, :w].to(dtype).expand(b, -1, -1, -1)
        cond = coord.to(dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
        out = self.first.of_codes(codes, self.config.n_codes)
        for block in self.blocks:
            out = block(out, cond, background)
        return self.head_out(F.elu(self.head_up(F.elu(out))))


def code_nll(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (nats) of each code: logits (B, K, H, L), codes (B, H, L) -> (B, H, L)."""
    return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                           codes, reduction="none")
