"""Row-by-row evaluation of a PixelSNAIL with cached context, for raster-order restoration.

Every layer of the prior is causal by grid rows: output row r depends on input rows <= r only,
and each layer looks at most two rows up (the first convolution: ``first_kernel // 2`` rows;
attention: every earlier position, kept as cached keys and values). So once restoration has moved
past row r, nothing in rows <= r changes again, and the logits of row r + 1 can be computed from
cached activations of the rows above plus row r + 1 itself: about 1/L of a full pass.

:class:`RowwisePrior` keeps, for each of N "states" (restorations), ring buffers of the last three
rows of every activation that a later row reads, and the attention keys/values of every position.
``row_logits(r, codes, reps, targets, inverse)`` evaluates row r for the representative states
``reps`` (from their cached rows < r and their current codes) and stores the results for all
``targets`` (``targets[i]`` gets ``reps[inverse[i]]``'s row), so identical states are evaluated
once; ``finish_row`` completes a row whose codes are final.

Inference only: dropout is ignored, as in eval mode. Shapes: codes (N, L, L); logits row (m, K, L).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .pixelsnail import GatedResBlock, PixelSNAIL, WNConv2d

_DEPTH = 3  # rows kept per activation: the widest look-up (5x5 masked conv) needs r-2..r


class _Ring:
    """Last ``_DEPTH`` rows of one activation for every state; row r lives in slot r % 3 as (N, C, W).

    Rows above the grid read as zeros (slots start at zero and a row < 0 is never written), which
    is the zero padding the full network applies.
    """

    def __init__(self, n: int, c: int, w: int, like: torch.Tensor) -> None:
        self.slots = [like.new_zeros((n, c, w)) for _ in range(_DEPTH)]

    def window(self, idx: torch.Tensor, r: int, k: int) -> torch.Tensor:
        """Rows r-k+1..r of states ``idx``: (m, C, k, W)."""
        rows = [self.slots[(r - k + 1 + i) % _DEPTH].index_select(0, idx) for i in range(k)]
        for i in range(max(0, k - 1 - r)):  # rows above the grid
            rows[i] = torch.zeros_like(rows[i])
        return torch.stack(rows, dim=2)

    def write(self, idx: torch.Tensor, r: int, row: torch.Tensor) -> None:
        # under autocast rows arrive in bfloat16/float16; the ring keeps the model's dtype
        slot = self.slots[r % _DEPTH]
        slot.index_copy_(0, idx, row[:, :, 0].to(slot.dtype))


def _row_conv(window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kw: int,
              stride: int = 1, crop: bool = False) -> torch.Tensor:
    """One output row of a convolution from its input rows, as a single matrix product.

    window (m, C, kh, W); weight (C', C*kh*kw) flattened from (C', C, kh, kw); columns padded by
    kw // 2 on both sides, as in the full network. Returns (m, C', 1, W'). A matrix product
    avoids building a new convolution primitive for every batch size, which at one row dominated
    the cost.
    """
    m = window.shape[0]
    cols = F.pad(window, (kw // 2, kw // 2)).unfold(3, kw, stride)  # (m, C, kh, W', kw)
    w_out = cols.shape[3]
    cols = cols.permute(0, 3, 1, 2, 4).reshape(m * w_out, -1)
    out = F.linear(cols, weight, bias).view(m, w_out, -1).permute(0, 2, 1).unsqueeze(2)
    return out[..., :-1] if crop else out


class RowwisePrior:
    def __init__(self, prior: PixelSNAIL, coord: torch.Tensor, n_states: int) -> None:
        if prior.training:
            raise ValueError("RowwisePrior evaluates an eval-mode prior; call prior.eval() first")
        cfg = prior.config
        self.prior, self.cfg = prior, cfg
        self.L, self.C, self.ds = cfg.latent_size, cfg.channels, cfg.attention_downsample
        self.wd = math.ceil(self.L / self.ds)  # attention grid width
        like = prior.head_up.weight
        self.coord = coord.to(like.dtype)  # (N, 1)
        self.background = prior.background.to(like.dtype)  # (1, 2, L, L)
        # Kernels flattened for matrix products, computed once: weight-normalised convolutions
        # and the attention's masked convolutions without their all-zero rows below the centre
        # (the first layer reads codes directly: MaskedConv2d.of_codes, from its table).
        self.first_table = prior.first.code_table()
        self.w = {m: m.weight().flatten(1) for m in prior.modules() if isinstance(m, WNConv2d)}
        self.masked = {}
        for m in (conv for blk in prior.blocks for conv in (blk.key_conv, blk.query_conv)):
            k = m.kernel
            full = F.pad(m.weight, (0, k * k - m.n_taps)).view(*m.weight.shape[:2], k, k)
            self.masked[m] = full[:, :, : k // 2 + 1].flatten(1)
        # Transposed convolutions with kernel = stride: each output column is a product with one
        # kernel column. (C_in, C_out, ds, ds) -> per output row offset: (C_out * ds, C_in).
        self.up = {blk: blk.upsample.weight.permute(2, 1, 3, 0).reshape(self.ds, -1, self.C)
                   for blk in prior.blocks}
        self.head_up = prior.head_up.weight[:, :, 0, 0].t()  # (C_out, C_in)

        n, c, L = n_states, self.C, self.L
        self.rings = []
        for _ in prior.blocks:
            rings = {"x": _Ring(n, c, L, like)}
            for lvl in range(cfg.n_res_blocks):
                for name in ("v", "v_mid", "h", "h_mid"):
                    rings[f"{name}{lvl}"] = _Ring(n, c, L, like)
            self.rings.append(rings)
        n_pos = self.wd * math.ceil(L / self.ds)
        self.keys = [like.new_zeros((n, n_pos, cfg.key_size)) for _ in prior.blocks]
        self.values = [like.new_zeros((n, n_pos, c)) for _ in prior.blocks]
        self.attn_row = [like.new_zeros((n, c, 1, self.wd)) for _ in prior.blocks]

    # -- pieces ---------------------------------------------------------------------------
    def _cond(self, idx: torch.Tensor, r: int, k: int) -> torch.Tensor:
        """Coord plane rows r-k+1..r, zero above the grid (padding applies to it too): (m, 1, k, L)."""
        out = self.coord[idx].view(-1, 1, 1, 1).expand(-1, 1, k, self.L).clone()
        out[:, :, : max(0, k - 1 - r)] = 0
        return out

    def _background(self, r: int, k: int) -> torch.Tensor:
        """Background rows r-k+1..r, zero above the grid: (1, 2, k, L)."""
        out = self.background.new_zeros((1, 2, k, self.L))
        lo = r - k + 1
        out[:, :, max(0, -lo):] = self.background[:, :, max(0, lo): r + 1]
        return out

    def _wn(self, conv: WNConv2d, window: torch.Tensor) -> torch.Tensor:
        return _row_conv(window, self.w[conv], conv.bias, conv.kernel[1], crop=conv.kernel[1] == 2)

    def _res_row(self, res: GatedResBlock, x_ring: _Ring, mid_ring: _Ring, out_ring: _Ring,
                 reps: torch.Tensor, targets: torch.Tensor, inverse: torch.Tensor, r: int,
                 aux_row: torch.Tensor | None) -> None:
        """Row r of a causal gated residual unit ((2, k) kernels, coord-conditioned)."""
        window = x_ring.window(reps, r, 2)
        h = self._wn(res.conv_in, F.elu(torch.cat([window, self._cond(reps, r, 2)], dim=1)))
        if aux_row is not None:
            h = h + self._wn(res.aux, F.elu(aux_row))
        mid_ring.write(targets, r, h[inverse])
        h = self._wn(res.conv_out, F.elu(mid_ring.window(reps, r, 2)))
        out_ring.write(targets, r, (window[:, :, 1:] + F.glu(h, dim=1))[inverse])

    def _pointwise_res(self, res: GatedResBlock, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        h = self._wn(res.conv_in, F.elu(x))
        if aux is not None:
            h = h + self._wn(res.aux, F.elu(aux))
        return x + F.glu(self._wn(res.conv_out, F.elu(h)), dim=1)

    def _attention_row(self, b: int, block, reps, targets, inverse, r: int) -> None:
        """Keys, values and attention output of attention-grid row r // ds (computed at r % ds == 0)."""
        rings = self.rings[b]
        last = f"h{self.cfg.n_res_blocks - 1}"
        x3, h3, bg3 = rings["x"].window(reps, r, 3), rings[last].window(reps, r, 3), self._background(r, 3)
        bg3 = bg3.expand(len(reps), -1, -1, -1)
        key_in = F.elu(_row_conv(torch.cat([x3, h3, bg3], 1), self.masked[block.key_conv],
                                 block.key_conv.bias, 5, stride=self.ds))
        query_in = F.elu(_row_conv(torch.cat([h3, bg3], 1), self.masked[block.query_conv],
                                   block.query_conv.bias, 5, stride=self.ds))
        att = block.attention
        q = att.query(self._pointwise_res(att.query_res, query_in).flatten(2).transpose(1, 2))
        k = att.key(self._pointwise_res(att.key_res, key_in).flatten(2).transpose(1, 2))
        v = att.value(self._pointwise_res(att.value_res, key_in).flatten(2).transpose(1, 2))
        R = r // self.ds
        p0, p1 = R * self.wd, (R + 1) * self.wd
        self.keys[b][targets, p0:p1] = k[inverse].to(self.keys[b].dtype)  # autocast: keep the model's dtype
        self.values[b][targets, p0:p1] = v[inverse].to(self.values[b].dtype)
        logits = q @ self.keys[b][reps, :p1].transpose(1, 2) / math.sqrt(att.key_size)  # (m, wd, p1)
        earlier = torch.arange(p1, device=q.device).view(1, -1) < torch.arange(p0, p1, device=q.device).view(-1, 1)
        weights = logits.masked_fill(~earlier, float("-inf")).softmax(-1).nan_to_num(0.0)
        out = (weights @ self.values[b][reps, :p1]).transpose(1, 2).unsqueeze(2)  # (m, C, 1, wd)
        self.attn_row[b][targets] = out[inverse].to(self.attn_row[b].dtype)

    # -- one row of the whole network ---------------------------------------------------------
    # The vertical stacks' row r only feeds rows below it, so evaluating a row's logits needs the
    # horizontal path only; :meth:`finish_row` adds the vertical stacks once the row is final.
    @torch.no_grad()
    def row_logits(self, r: int, codes: torch.Tensor, reps: torch.Tensor, targets: torch.Tensor,
                   inverse: torch.Tensor) -> torch.Tensor:
        """Logits (m, K, L) of grid row r for states ``reps``; caches row r for ``targets``.

        Needs the vertical stacks of rows < r (:meth:`finish_row`) and the codes of rows <= r.
        """
        prior, cfg = self.prior, self.cfg
        window = codes[reps, max(0, r - cfg.first_kernel // 2): r + 1]  # (m, <=k, L); of_codes pads above
        x = prior.first.of_codes(window, cfg.n_codes, last_row=True, table=self.first_table)  # (m, C, 1, L)
        for b, block in enumerate(prior.blocks):
            rings = self.rings[b]
            rings["x"].write(targets, r, x[inverse])
            h_prev = "x"
            for lvl, h_res in enumerate(block.h_stack):
                shifted = rings[f"v{lvl}"].window(reps, r - 1, 1)  # down-shifted v: its row r - 1
                self._res_row(h_res, rings[h_prev], rings[f"h_mid{lvl}"], rings[f"h{lvl}"],
                              reps, targets, inverse, r, shifted)
                h_prev = f"h{lvl}"
            if r % self.ds == 0:
                self._attention_row(b, block, reps, targets, inverse, r)
            a = F.elu(self.attn_row[b][reps])[:, :, 0].transpose(1, 2)  # (m, wd, C)
            up = F.linear(a, self.up[block][r % self.ds])  # (m, wd, C * ds): column j*ds + t
            up = up.view(len(reps), self.wd, self.C, self.ds).permute(0, 2, 1, 3).reshape(
                len(reps), self.C, 1, self.wd * self.ds)[..., : self.L] + block.upsample.bias.view(1, -1, 1, 1)
            x = self._pointwise_res(block.out, rings[h_prev].window(reps, r, 1), up)
        h = F.linear(F.elu(x)[:, :, 0].transpose(1, 2), self.head_up, prior.head_up.bias)  # (m, L, C)
        return F.linear(F.elu(h), self.w[prior.head_out], prior.head_out.bias).transpose(1, 2)  # (m, K, L)

    @torch.no_grad()
    def finish_row(self, r: int, reps: torch.Tensor, targets: torch.Tensor, inverse: torch.Tensor) -> None:
        """Vertical stacks of row r, once row r's codes (and so its block inputs) are final."""
        for b, block in enumerate(self.prior.blocks):
            rings = self.rings[b]
            v_prev = "x"
            for lvl, v_res in enumerate(block.v_stack):
                self._res_row(v_res, rings[v_prev], rings[f"v_mid{lvl}"], rings[f"v{lvl}"],
                              reps, targets, inverse, r, None)
                v_prev = f"v{lvl}"
