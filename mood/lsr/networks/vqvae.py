"""VQ-VAE over 2-D slices with slice-position conditioning (the original method's ``nets_LV.VQVAE``).

Shapes: ``x`` (B, S, S) slices, ``coord`` (B, 1) relative slice positions, codes (B, L, L) with
``L = S / 2**levels``; quantised latents (B, D, L, L).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...config import VQVAEConfig


class GatedResBlock(nn.Module):
    """Pre-activation residual unit with batch norm and a gated (GLU) output."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_in = nn.BatchNorm2d(channels)
        self.conv_in = nn.Conv2d(channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_out = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.norm_out = nn.BatchNorm2d(2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(F.elu(self.norm_in(x)))
        h = self.norm_out(self.conv_out(self.dropout(F.elu(h))))
        return x + F.glu(h, dim=1)


def _coord_plane(coord: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, 1) positions -> (B, 1, H, W) constant planes matching ``like``."""
    return coord.to(like.dtype).view(-1, 1, 1, 1).expand(-1, 1, *like.shape[-2:])


def rotated_to(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Encodings ``z`` (B, D, L, L) mapped onto their codes ``e``: equal to ``e`` in value, but the
    gradient reaches ``z`` through the rotation and rescaling that carries ``z`` to ``e``, held
    constant (the rotation trick, Fifty et al. 2024, arXiv:2410.06424, section 4.2), instead of the
    straight-through copy. It tells the encoder where within a code's cell its output lies."""
    zf, ef = z.movedim(1, -1), e.movedim(1, -1)  # (..., D)
    z_norm = zf.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    e_norm = ef.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    u, q = (zf / z_norm).detach(), (ef / e_norm).detach()
    w = F.normalize(u + q, dim=-1)  # the Householder reflection's axis, with R = I - 2ww' + 2qu'
    rotated = zf - 2 * (zf * w).sum(-1, keepdim=True) * w + 2 * (zf * u).sum(-1, keepdim=True) * q
    return (rotated * (e_norm / z_norm).detach()).movedim(-1, 1)


class Quantised(NamedTuple):
    latents: torch.Tensor  # (B, D, L, L) quantised latents (the codes' vectors, with a gradient to z)
    codes: torch.Tensor  # (B, L, L) int64 code indices
    encodings: torch.Tensor  # (B, D, L, L) encoder outputs before quantisation


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        p = config.dropout

        enc: list[nn.Module] = [nn.Conv2d(2, ch[0], 7, padding=config.first_conv_padding),
                                nn.BatchNorm2d(ch[0])]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            enc += [GatedResBlock(c_in, p) for _ in range(config.n_res_blocks)]
            enc += [nn.Conv2d(c_in, c_out, 5, stride=2, padding=2), nn.BatchNorm2d(c_out)]
        enc.append(GatedResBlock(ch[-1], p))
        self.encoder = nn.Sequential(*enc)

        self.codebook = nn.Embedding(config.n_codes, ch[-1])
        nn.init.uniform_(self.codebook.weight, -1.0 / config.n_codes, 1.0 / config.n_codes)

        rev = ch[::-1]
        self.decoder_in = nn.Sequential(nn.Conv2d(ch[-1] + 1, ch[-1], 3, padding=1),
                                        nn.BatchNorm2d(ch[-1]))
        dec: list[nn.Module] = []
        for c_in, c_out in zip(rev[:-1], rev[1:]):
            dec += [GatedResBlock(c_in, p) for _ in range(config.n_res_blocks)]
            dec += [nn.ConvTranspose2d(c_in, c_out, 6, stride=2, padding=2), nn.BatchNorm2d(c_out)]
        dec += [GatedResBlock(rev[-1], p), nn.ELU(), nn.Conv2d(rev[-1], 1, 1)]
        self.decoder = nn.Sequential(*dec)

    # -- stages ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, coord: torch.Tensor, rotation: bool = False) -> Quantised:
        """Slices (B, S, S) and positions (B, 1) -> quantised latents, codes and encodings. The
        latents' gradient reaches the encoder by a straight-through copy (the original's) or, with
        ``rotation``, by :func:`rotated_to`; their values are the same."""
        x = x.unsqueeze(1)
        z = self.encoder(torch.cat([x, _coord_plane(coord, x)], dim=1))
        codes = self.nearest_codes(z)
        e = self.codebook(codes).permute(0, 3, 1, 2)
        if rotation:
            return Quantised(rotated_to(z, e.detach()), codes, z)
        return Quantised(z + (e - z).detach(), codes, z)

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Encodings (B, D, L, L) -> indices (B, L, L) of the nearest codebook vectors (squared L2)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (B*L*L, D)
        book = self.codebook.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)
        return dist.argmin(1).view(z.shape[0], *z.shape[2:])

    def decode(self, latents: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, L, L) and positions (B, 1) -> slices (B, S, S)."""
        h = self.decoder_in(torch.cat([latents, _coord_plane(coord, latents)], dim=1))
        return self.decoder(h).squeeze(1)

    def decode_codes(self, codes: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        """Codes (B, L, L) -> slices (B, S, S)."""
        return self.decode(self.codebook(codes).permute(0, 3, 1, 2), coord)

    def forward(self, x: torch.Tensor, coord: torch.Tensor, rotation: bool = False) -> tuple[torch.Tensor, Quantised]:
        q = self.encode(x, coord, rotation)
        return self.decode(q.latents, coord), q


def vq_losses(x: torch.Tensor, recon: torch.Tensor, q: Quantised, codebook: torch.Tensor,
              commitment: float) -> dict[str, torch.Tensor]:
    """L1 reconstruction, codebook and commitment terms (the original uses commitment weight 1)."""
    e = codebook[q.codes].permute(0, 3, 1, 2)
    return {
        "recon": F.l1_loss(recon, x),
        "codebook": F.mse_loss(e, q.encodings.detach()),
        "commit": commitment * F.mse_loss(q.encodings, e.detach()),
    }
