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


def plot_eigenvalues(eigen_g, eigen_s, path, labels=("G", "1-S"), log=True):
    """Grouped bars of the top eigenvalues of the two solutions (paper Fig. 2b); saves a PNG at ``path``.

    ``log``: True (the default, the paper's log axis), False (linear) or "auto" (log only when the
    values span more than a factor 20). A log axis cannot show values <= 0: then the axis is linear
    and the title says why, rather than failing on a saddle's negative eigenvalue.
    """
    if log not in (True, False, "auto"):
        from kerasprune.errors import KerasPruneError

        raise KerasPruneError(f"log must be True, False or 'auto', got {log!r}")
    plt = _pyplot()
    eigen_g, eigen_s = np.asarray(eigen_g, float), np.asarray(eigen_s, float)
    k = max(len(eigen_g), len(eigen_s))
    x = np.arange(1, k + 1)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    both = np.concatenate([eigen_g, eigen_s])
    positive = both.size > 0 and bool(np.all(both > 0))
    use_log = positive and (log is True or (log == "auto" and both.max() / both.min() > 20))
    title = f"top-{k} Hessian eigenvalues"
    if log is True and not positive:
        title += "\n(linear axis: a value is <= 0, which a log axis cannot show)"
    for offset, values, label in ((-0.2, eigen_g, labels[0]), (0.2, eigen_s, labels[1])):
        bars = ax.bar(x[:len(values)] + offset, values, 0.4, label=label)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
    if use_log:
        ax.set_yscale("log")
        # Bars rise from a floor below the smallest value, with room above the largest for its label.
        ax.set_ylim(10 ** np.floor(np.log10(both.min()) - 0.3), both.max() * 2.5)  # the floor: < min / 2
        from matplotlib import ticker

        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, 1, 10: not 10^-1...
        # Within a decade or two the powers of ten alone leave the bars unreadable: label 2, 3 and 5 too.
        minor = np.log10(ax.get_ylim()[1] / ax.get_ylim()[0]) < 2.5
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if minor and round(v / 10 ** np.floor(np.log10(v) + 1e-9)) in (2, 3, 5) else ""))
    else:
        ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xticks(x)
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel("Hessian eigenvalue" + (" (log scale)" if use_log else ""))
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
