"""PNG figures of training runs (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

from ..report import pyplot, save_png


def attention_png(path: str, items) -> None:
    """items: [(source tokens, output tokens, weights [len(out), len(src)])] -> one heatmap each."""
    plt = pyplot()
    n = len(items)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, (src, out, w) in zip(axes[0], items):
        ax.imshow(w.numpy(), cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(len(src)))
        ax.set_xticklabels([s if s != " " else "␣" for s in src], fontsize=7)
        ax.set_yticks(range(len(out)))
        ax.set_yticklabels(out, fontsize=7)
        ax.set_xlabel("source")
        ax.set_ylabel("output")
    fig.suptitle("attention weights (rows: output step, columns: source position)")
    save_png(fig, path)


def memory_access_png(path: str, x, y, out, mask, read_w, write_w) -> None:
    """NTM trace of one sequence: input, target, output, and the write / read weights of each
    head over time (x [T, I], y / out [T, O], mask [T], read_w [T, R, N], write_w [T, W, N])."""
    plt = pyplot()
    R, W = read_w.shape[1], write_w.shape[1]
    used = (read_w.amax((0, 1)) > 1e-3) | (write_w.amax((0, 1)) > 1e-3)
    N = int(used.nonzero().max()) + 1 if used.any() else read_w.shape[-1]
    N = min(read_w.shape[-1], max(N + 2, 8))
    rows = 3 + R + W
    fig, axes = plt.subplots(rows, 1, figsize=(8, 1.3 * rows + 0.6), squeeze=False, sharex=True)
    panels = [("input", x.T), ("target", (y * mask.unsqueeze(-1)).T), ("output", (out * mask.unsqueeze(-1)).T)]
    panels += [(f"write head {h}", write_w[:, h, :N].T) for h in range(W)]
    panels += [(f"read head {h}", read_w[:, h, :N].T) for h in range(R)]
    for ax, (name, img) in zip(axes[:, 0], panels):
        head = "head" in name
        ax.imshow(img.float().numpy(), cmap="magma" if head else "gray_r", aspect="auto", interpolation="nearest",
                  vmin=0, vmax=float(img.max()) if head else 1)
        ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("time step (head rows: memory slot, first %d shown)" % N)
    fig.suptitle("NTM memory access")
    save_png(fig, path)
