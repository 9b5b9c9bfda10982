"""Figures of the analysis: contour maps of the plane (Fig. 2a, 3, 4) and top eigenvalues (Fig. 2b).

Plots only read numbers (the arrays :func:`kerasprune.analysis.landscape.evaluate_grid` returns, or
the same arrays from ``analysis.json``), so figures can be redrawn without TensorFlow.
"""
import numpy as np

TITLES = {
    "train_loss": "training loss",
    "test_error": "test error",
    "psp_l2": "PSP L2 norm (mean $z^2$)",
    "psp_entropy_1": "first-order PSP-entropy (bits)",
    "psp_entropy_2": "second-order PSP-entropy (bits)",
}
LOG_SCALE = ("train_loss", "psp_l2")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_map(alphas, betas, values, metric, path, labels=("G", "1-S"), levels=20):
    """One filled contour map with G at (0, 0) and 1-S at (1, 0); saves a PNG at ``path``."""
    plt = _pyplot()
    from matplotlib import colors

    values = np.asarray(values, float)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", transform=ax.transAxes)
    elif metric in LOG_SCALE and finite.min() > 0 and finite.max() > finite.min():
        lv = np.geomspace(finite.min(), finite.max(), levels)
        cs = ax.contourf(alphas, betas, values, levels=lv, norm=colors.LogNorm(), cmap="viridis")
        # Ticks at round values across the range: a log locator shows none inside one decade.
        fig.colorbar(cs, ax=ax, ticks=np.geomspace(finite.min(), finite.max(), 6), format="%.3g")
    else:
        cs = ax.contourf(alphas, betas, values, levels=levels, cmap="viridis")
        fig.colorbar(cs, ax=ax)
    for (x, y), label in zip(((0.0, 0.0), (1.0, 0.0)), labels):
        ax.plot(x, y, marker="*" if label == labels[0] else "o", color="red", markersize=11,
                markeredgecolor="white")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), color="white",
                    fontweight="bold")
    ax.set_xlabel(f"direction {labels[0]} \u2192 {labels[1]}")
    ax.set_ylabel("random orthogonal direction")
    ax.set_title(TITLES.get(metric, metric))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_eigenvalues(eigen_g, eigen_s, path, labels=("G", "1-S")):
    """Grouped bars of the top eigenvalues of the two solutions, log scale (paper Fig. 2b)."""
    plt = _pyplot()
    eigen_g, eigen_s = np.asarray(eigen_g, float), np.asarray(eigen_s, float)
    k = max(len(eigen_g), len(eigen_s))
    x = np.arange(1, k + 1)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for offset, values, label in ((-0.2, eigen_g, labels[0]), (0.2, eigen_s, labels[1])):
        bars = ax.bar(x[:len(values)] + offset, values, 0.4, label=label)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
    both = np.concatenate([eigen_g, eigen_s])
    if np.all(both > 0) and both.max() / both.min() > 20:  # log only when it spans decades (Fig. 2b)
        ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel("Hessian eigenvalue")
    ax.set_title(f"top-{k} Hessian eigenvalues")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
