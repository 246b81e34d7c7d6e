"""The needle grid as a heat map (depth rows x length columns, accuracy 0..1 annotated), and as a text table."""

from __future__ import annotations

from pathlib import Path

from dlm.io.atomic import atomic_file


def needle_table(grid: dict) -> str:
    """Rows: depths; columns: row lengths; entries: exact-match accuracy."""
    lengths, depths = grid["lengths"], grid["depths"]
    lines = ["depth \\ length " + "".join(f"{n:>8}" for n in lengths)]
    for d, row in zip(depths, grid["accuracy"], strict=True):
        lines.append(f"{d:>14.2f} " + "".join(f"{a:>8.2f}" for a in row))
    return "\n".join(lines)


def plot_needle_grid(grid: dict, path: str | Path, *, title: str) -> None:
    """Write the heat map PNG at ``path`` atomically (a reader never sees half an image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths, acc = grid["lengths"], grid["depths"], grid["accuracy"]
    fig, ax = plt.subplots(figsize=(2.8 + 0.9 * len(lengths), 1.6 + 0.45 * len(depths)))
    image = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{acc[i][j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("row length (tokens)")
    ax.set_ylabel("needle depth\n(0 = start, 1 = by the query)", fontsize=8)
    ax.set_title(title, fontsize=8, wrap=True)
    fig.colorbar(image, ax=ax, label="exact match")
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f.buffer, format="png", dpi=120)  # the binary stream under the text handle: PNG bytes
    plt.close(fig)
