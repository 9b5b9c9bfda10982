"""The Figure 1 plot of a sweep, from its results table alone (no TensorFlow import).

Test error (%, log scale, as in the paper) against the operating points' % pruned parameters on
the bottom axis, with LOBSTER's % pruned neurons at the same points on a top axis. Points sit at
equal spacing, labelled with their sparsity (the paper's layout, which keeps 95/98/99% readable).
Each method is a line through its mean over seeds with a band from min to max and +-1 std bars.
"""
import collections

import numpy as np

from kerasprune.runs import atomic_path

LABELS = {
    "lobster": "LOBSTER",
    "lottery_rewind": "Frankle & Carbin (rewind)",
    "random_reinit": "Liu et al. (reinit)",
    "random_structure": "Random pruning",
    "magnitude_oneshot": "Magnitude one-shot",
    "imp": "IMP (lottery rounds)",
    "polynomial_decay": "PolynomialDecay (Zhu & Gupta)",
}
ORDER = tuple(LABELS)


def summarize(rows):
    """``{(method, variant): {point: (mean, std, min, max, n)}}`` of test error in %."""
    groups = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        if r.get("test_error") is None or r.get("point") is None:
            continue
        groups[(r["method"], r.get("variant") or "")][int(r["point"])].append(100.0 * float(r["test_error"]))
    out = {}
    for key, by_point in groups.items():
        # Sample standard deviation (n - 1): the seeds are a sample of the method's outcomes.
        out[key] = {p: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                        float(np.min(v)), float(np.max(v)), len(v))
                    for p, v in sorted(by_point.items())}
    return out


def figure1(rows, path, title=None):
    """Writes the Figure 1 PNG for ``rows`` (as from ``kerasprune.results.read``) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lobster = {int(r["point"]): r for r in rows if r["method"] == "lobster"}
    stats = summarize(rows)
    points = sorted({p for s in stats.values() for p in s})
    if not points:
        raise ValueError("no rows with a test error to plot")
    x_of = {p: i for i, p in enumerate(points)}
    fig, ax = plt.subplots(figsize=(10.5, 5.2), dpi=120)
    keys = sorted(stats, key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else len(ORDER), k[1]))
    for key in keys:
        method, variant = key
        s = stats[key]
        xs = np.array([x_of[p] for p in s])
        mean = np.array([v[0] for v in s.values()])
        std = np.array([v[1] for v in s.values()])
        lo, hi = np.array([v[2] for v in s.values()]), np.array([v[3] for v in s.values()])
        label = LABELS.get(method, method) + (f" ({variant})" if variant else "")
        n = max(v[4] for v in s.values())
        if n > 1:
            label += f", {n} seeds"
        style = dict(lw=2.4, marker="o", ms=6, zorder=5) if method == "lobster" else dict(lw=1.4, marker=".", ms=7)
        line = ax.errorbar(xs, mean, yerr=np.vstack([np.minimum(std, mean - 1e-3), std]), capsize=3,
                           label=label, **style)
        if n > 1:
            ax.fill_between(xs, lo, hi, color=line[0].get_color(), alpha=0.12, lw=0)
    ax.set_yscale("log")
    errors = [v[0] for s in stats.values() for v in s.values()]
    ticks = _log_ticks(min(errors), max(errors))
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("Classification error (%)")
    # Every point gets a minor tick; labels only where they fit, the baselines' points first.
    labelled = _labelled(len(points), [x_of[p] for k in keys if k[0] != "lobster" for p in stats[k]])
    ax.set_xticks(range(len(points)), minor=True)
    ax.set_xticks(labelled)
    ax.set_xticklabels([_pct(lobster, points[i], "pruned_params_pct") for i in labelled])
    ax.set_xlabel("Pruned parameters (%)")
    ax.set_xlim(-0.3, len(points) - 0.7)
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    top.set_xticks(range(len(points)), minor=True)
    top.set_xticks(labelled)
    # The authors' neuron count (incoming weights all zero, logits included), as the paper's top
    # axis; tables from before it existed fall back to kerasprune's own count, and say so.
    column = ("pruned_neurons_ref_pct" if any(r.get("pruned_neurons_ref_pct") is not None for r in lobster.values())
              else "pruned_neurons_pct")
    top.set_xticklabels([_pct(lobster, points[i], column) for i in labelled])
    top.set_xlabel("Pruned neurons (%) of LOBSTER" + (", incoming weights all zero (authors' count)"
                                                      if column == "pruned_neurons_ref_pct" else
                                                      ", dead on inputs or outputs (kerasprune's count)"))
    ax.grid(True, which="major", alpha=0.3)
    # Outside the axes: with eight methods any spot inside hides some curve.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def _labelled(n, preferred, max_labels=12):
    """Indices of at most about ``max_labels`` of ``n`` evenly spaced ticks that get a label, at
    least ``n / max_labels`` apart: ``preferred`` ones first, then the last, the first and a regular
    grid, so the labels of a 100-level LOBSTER run do not overprint each other."""
    if n <= max_labels:
        return list(range(n))
    gap = n / max_labels
    chosen = []
    for i in sorted(set(preferred)) + [n - 1, 0] + [int(round(k * gap)) for k in range(max_labels)]:
        if 0 <= i < n and all(abs(i - j) >= gap for j in chosen):
            chosen.append(i)
    return sorted(chosen)


def _pct(lobster, point, column):
    row = lobster.get(point)
    return "?" if row is None or row.get(column) is None else f"{float(row[column]):.2f}"


def _log_ticks(lo, hi, count=6):
    """``count`` readable ticks spread evenly (in log) from ``lo`` to ``hi``, 2 significant digits,
    since the paper labels its error axis with values rather than decades."""
    lo, hi = max(lo, 1e-3), max(hi, lo * 1.01)
    ticks = [float(f"{v:.2g}") for v in np.geomspace(lo, hi, count)]
    return sorted(set(ticks))
