"""An independent, direct implementation of one regularized LSTM layer, for tests.

Written row by row and step by step with torch.nn.functional.batch_norm, without any
fusedrnn code, straight from the semantics of fusedrnn/core/contract.py and docs/guide.md: per-step batch statistics over
the rows still running at that step, running statistics per step for s < S (eval clamps
to slot S - 1), masks on h_{s-1} where it enters W_hh only, reverse = each row's own
sequence backwards.  Slow and obvious on purpose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _layer_norm(v, weight, bias, eps):
    """Each row of v normalised over its columns (biased variance), then weight * . + bias."""
    mean = v.mean(1, keepdim=True)
    var = ((v - mean) ** 2).mean(1, keepdim=True)
    return (v - mean) / torch.sqrt(var + eps) * weight + bias


def direct_layer(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, *, mask=None,
                 lengths=None, reverse=False, bn=None, zoneout=None, ln=None):
    """x [T, B, I]; h0 [B, R]; c0 [B, H]; mask [B, R] or [T, B, R]; bn a dict with keys
    gamma_x, gamma_h, gamma_c, beta_c, rm_x, rv_x, rm_h, rv_h, rm_c, rv_c, training,
    momentum, eps (running tensors are updated in place); zoneout a pair (zc [T, B, H],
    zh [T, B, R]) of weights of the previous state, by step; ln a dict with keys wx, bx, wh,
    bh, wc, bc, eps (Ba et al.: LN of x W_ih^T and of h W_hh^T over the 4H columns, bias
    after; LN of c~ before the output tanh).  Returns y, h_n, c_n."""
    T, B, _ = x.shape
    R = w_hh.shape[1]
    L = [T] * B if lengths is None else [int(v) for v in lengths]
    h = [h0[b] for b in range(B)]
    c = [c0[b] for b in range(B)]
    y = [[x.new_zeros(R) for _ in range(B)] for _ in range(T)]
    for s in range(T):
        rows = [b for b in range(B) if L[b] > s]
        if not rows:
            continue
        pos = [(L[b] - 1 - s) if reverse else s for b in rows]
        xt = torch.stack([x[t, b] for t, b in zip(pos, rows)])
        ht = torch.stack([h[b] for b in rows])
        ct = torch.stack([c[b] for b in rows])
        if mask is not None:
            m = mask if mask.dim() == 2 else mask[s]
            ht = ht * m[rows]
        xw = xt @ w_ih.t()
        hh = ht @ w_hh.t()
        if ln is not None:
            xw = _layer_norm(xw, ln["wx"], ln["bx"], ln["eps"])
            hh = _layer_norm(hh, ln["wh"], ln["bh"], ln["eps"])
        if bn is not None:
            S = bn["rm_x"].shape[0]
            slot = min(s, S - 1)
            keep = not bn["training"] or s < S  # steps past the last slot do not update it

            def norm(v, part, weight, bias):
                if bn["training"] and v.shape[0] == 1:
                    # one row running: mean = the row, biased variance 0, so the output is the
                    # bias; the running statistics are not updated (no unbiased variance)
                    out = (v - v) * weight  # zero, with zero gradient (as the exact formula)
                    return out if bias is None else out + bias
                rm = bn[f"rm_{part}"][slot] if keep else None
                rv = bn[f"rv_{part}"][slot] if keep else None
                return F.batch_norm(v, rm, rv, weight, bias, bn["training"], bn["momentum"], bn["eps"])

            xw = norm(xw, "x", bn["gamma_x"], None)
            hh = norm(hh, "h", bn["gamma_h"], None)
        pre = xw + hh
        if b_ih is not None:
            pre = pre + b_ih + b_hh
        i, f, g, o = pre.chunk(4, 1)
        c_new = torch.sigmoid(f) * ct + torch.sigmoid(i) * torch.tanh(g)
        c_hat = c_new if bn is None else norm(c_new, "c", bn["gamma_c"], bn["beta_c"])
        if ln is not None:
            c_hat = _layer_norm(c_new, ln["wc"], ln["bc"], ln["eps"])
        h_new = torch.sigmoid(o) * torch.tanh(c_hat)
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        if zoneout is not None:  # each unit keeps its previous value with weight z
            zc, zh = zoneout[0][s][rows], zoneout[1][s][rows]
            c_new = zc * ct + (1 - zc) * c_new
            h_new = zh * torch.stack([h[b] for b in rows]) + (1 - zh) * h_new
        for k, (t, b) in enumerate(zip(pos, rows)):
            h[b], c[b], y[t][b] = h_new[k], c_new[k], h_new[k]
    return (torch.stack([torch.stack(r) for r in y]), torch.stack(h), torch.stack(c))


def direct_gru_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, mask=None, lengths=None, reverse=False, bn=None,
                     zoneout=None, ln=None):
    """One GRU layer (torch's gates r, z, n; b_hn inside the reset product), row by row and
    step by step: x [T, B, I]; h0 [B, H]; mask [B, H] or [T, B, H]; bn a dict with keys
    gamma_x, gamma_h, rm_x, rv_x, rm_h, rv_h, training, momentum, eps (no c parts, no betas:
    the GRU's biases shift them; running tensors updated in place); zoneout the weights of
    h_{s-1} [T, B, H] by step; ln a dict with keys wx, bx, wh, bh, eps (LN of x W_ih^T and of
    h W_hh^T over the 3H columns, then the biases where torch adds them).  Returns y, h_n."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    L = [T] * B if lengths is None else [int(v) for v in lengths]
    h = [h0[b] for b in range(B)]
    y = [[x.new_zeros(H) for _ in range(B)] for _ in range(T)]
    for s in range(T):
        rows = [b for b in range(B) if L[b] > s]
        if not rows:
            continue
        pos = [(L[b] - 1 - s) if reverse else s for b in rows]
        xt = torch.stack([x[t, b] for t, b in zip(pos, rows)])
        ht = torch.stack([h[b] for b in rows])
        hm = ht if mask is None else ht * (mask if mask.dim() == 2 else mask[s])[rows]
        xw, hw = xt @ w_ih.t(), hm @ w_hh.t()
        if ln is not None:
            xw = _layer_norm(xw, ln["wx"], ln["bx"], ln["eps"])
            hw = _layer_norm(hw, ln["wh"], ln["bh"], ln["eps"])
        if bn is not None:
            S = bn["rm_x"].shape[0]
            slot = min(s, S - 1)
            keep = not bn["training"] or s < S

            def norm(v, part, weight):
                if bn["training"] and v.shape[0] == 1:
                    return (v - v) * weight
                rm = bn[f"rm_{part}"][slot] if keep else None
                rv = bn[f"rv_{part}"][slot] if keep else None
                return F.batch_norm(v, rm, rv, weight, None, bn["training"], bn["momentum"], bn["eps"])

            xw, hw = norm(xw, "x", bn["gamma_x"]), norm(hw, "h", bn["gamma_h"])
        if b_ih is not None:
            xw, hw = xw + b_ih, hw + b_hh
        x_r, x_z, x_n = xw.chunk(3, 1)
        h_r, h_z, h_n = hw.chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h_new = (1 - z) * n + z * ht
        if zoneout is not None:
            zh = zoneout[s][rows]
            h_new = zh * ht + (1 - zh) * h_new
        for k, (t, b) in enumerate(zip(pos, rows)):
            h[b], y[t][b] = h_new[k], h_new[k]
    return torch.stack([torch.stack(r) for r in y]), torch.stack(h)
