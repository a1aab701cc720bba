"""PNG figures (matplotlib, Agg canvas, no pyplot state): Pareto panels, selectors, memory, the
sweep's hypervolume against trials and compute.

Figure sizes are fixed (no tight bbox), so each PNG has a known pixel size: SIZES x DPI.
"""
from __future__ import annotations

import matplotlib.patheffects as pe
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.fronts import nondominated
from analysis.runs import feasible
from analysis.style import (BASE_LABEL, panels, method_color, selector_color, selector_marker,
                            selector_name, y_label)
from analysis.summary import CONTROLS, SELECTOR_ORDER, ordered
from smf_sweep.objectives import COMPUTE, HYPERVOLUME, Objectives

DPI = 100
SIZES = {"pareto": (18, 6), "selectors": (16, 4.5), "memory": (12, 8), "hypervolume": (12, 4.5)}  # inches -> px = x DPI


def _figure(name: str, **kw) -> Figure:
    fig = Figure(figsize=SIZES[name], dpi=DPI, layout="constrained", **kw)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> None:
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": keeps the pixel size fixed


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _default_label(r) -> str:
    sel = r["selector"] if isinstance(r["selector"], str) else None
    return f"{r['method']} default" + (f" ({sel})" if sel else "")


def _annotate_apart(ax, labels: dict[str, tuple[float, float]], gap_pt: float = 10.0) -> None:
    """Label points 7 pt right and 5 pt above; labels that would overlap a lower one move up."""
    ax.autoscale_view()
    pt = 72.0 / ax.figure.dpi                                   # points per display pixel
    at = sorted(((ax.transData.transform(xy) * pt, text, xy) for text, xy in labels.items()),
                key=lambda a: (a[0][1], a[0][0]))
    placed: list[tuple[float, float]] = []                      # (x, y) of placed labels, in points
    for (x, y), text, xy in at:
        ly = y + 5
        for px, py in placed:
            if abs(px - x) < 0.6 * 8 * len(text) and ly - py < gap_pt:  # ≈ width of an 8 pt label
                ly = py + gap_pt
        placed.append((x, ly))
        ax.annotate(text, xy, xytext=(7, ly - y), textcoords="offset points", fontsize=8)


def front_line(sub: pd.DataFrame, obj: Objectives, y: str, x: str) -> pd.DataFrame:
    """The (y, x) front of `sub`'s feasible trials in the objectives' directions, ordered for a step
    line: from the best x to the worst (y then improves)."""
    senses = {y: obj.mode(y), x: obj.mode(x)}
    sub = sub[feasible(sub, obj)]
    front = sub[nondominated(sub, senses)]
    return front.sort_values([x, y], ascending=[senses[x] == "min", senses[y] == "max"], kind="stable")


def _pareto_panel(ax, fin: pd.DataFrame, methods, selectors, obj, y, xcol, xlabel, budget):
    ax.axhline(0, color="0.6", lw=0.8, ls="--", zorder=0)
    ax.axvline(0, color="0.6", lw=0.8, ls="--", zorder=0)
    size, alpha = (50, 0.85) if len(fin) <= 200 else (18, 0.45)  # many trials: fronts stay legible
    halo = [pe.Stroke(linewidth=3.6, foreground="white"), pe.Normal()]
    ok = feasible(fin, obj)
    for m in methods:
        sub = fin[fin["method"] == m]
        if sub.empty:
            continue
        color = method_color(m, methods)
        for s, g in sub.groupby(sub["selector"].fillna(""), sort=False):
            good = ok.loc[g.index]
            ax.scatter(g.loc[good, xcol], g.loc[good, y], c=color, marker=selector_marker(s or None, selectors),
                       s=size, alpha=alpha, edgecolors="white", linewidths=0.5, zorder=3)
            if (~good).any():              # infeasible (the spec's constraints): hollow, never on a front
                ax.scatter(g.loc[~good, xcol], g.loc[~good, y], facecolors="none", edgecolors=color,
                           marker=selector_marker(s or None, selectors), s=size, alpha=alpha, linewidths=1.0,
                           zorder=3)
        front = front_line(sub, obj, y, xcol)
        ax.step(front[xcol], front[y], where="post", color=color, lw=1.8, zorder=4,
                path_effects=halo)
    ax.scatter([0], [0], marker="*", s=260, c="gold", edgecolors="black", linewidths=1.0,
               zorder=6)
    ax.annotate(BASE_LABEL, (0, 0), xytext=(6, -12), textcoords="offset points", fontsize=8)
    labels = {}
    for _, r in fin[fin["default_point"]].iterrows():
        ax.scatter([r[xcol]], [r[y]], s=120, facecolors="none", edgecolors="black",
                   linewidths=1.2, zorder=5)
        labels.setdefault(_default_label(r), (r[xcol], r[y]))  # one label per default config, not per seed
    _annotate_apart(ax, labels)
    if budget is not None:
        ax.axvline(budget, color="0.3", lw=1.0, ls=":", zorder=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(y_label(obj, y))
    ax.grid(alpha=0.25)


def pareto_png(fin: pd.DataFrame, methods: list, title: str, path, budget: float,
               obj: Objectives | None = None) -> None:
    """Panels of the sweep's first objective against each other objective, forgetting and the
    forgetting probes' deltas (style.panels); lines: each method's front in their directions."""
    obj = obj or Objectives()
    selectors = ordered(fin["selector"].unique(), SELECTOR_ORDER)
    fig = _figure("pareto")
    y, xs = panels(obj)
    axes = np.atleast_1d(fig.subplots(1, len(xs)))
    for i, (ax, (xcol, xlabel)) in enumerate(zip(axes, xs)):
        line = obj.budget_for(xcol, budget) if xcol in obj.forgetting_metrics() else None
        _pareto_panel(ax, fin, methods, selectors, obj, y, xcol, xlabel, line)
        ax.set_title(f"{obj.short(y)} vs {obj.short(xcol)}" + (" (lines: each method's front)" if i == 0 else ""))
    done = set(fin["method"])
    handles = [Line2D([], [], color=method_color(m, methods), marker="o", lw=1.6,
                      label=m if m in done else f"{m} (no finished trials)") for m in methods]
    has_sel = fin["selector"].notna().any()
    handles += [Line2D([], [], color="0.35", marker=selector_marker(s, selectors), ls="none",
                       label=f"selector {s}") for s in selectors] if has_sel else []
    handles += [Line2D([], [], color="gold", marker="*", markersize=14, markeredgecolor="black",
                       ls="none", label=f"{BASE_LABEL} (0, 0)"),
                Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=10,
                       ls="none", label="default point"),
                Line2D([], [], color="0.3", ls=":", label=f"forgetting budget {budget:g}")]
    if obj.constraints:
        handles.append(Line2D([], [], color="0.35", marker="o", markerfacecolor="none", ls="none",
                              label="infeasible: " + ", ".join(str(c) for c in obj.constraints)))
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    fig.suptitle(title)
    _save(fig, path)


def _strip(ax, smf: pd.DataFrame, col: str, selectors: list, ylabel: str) -> None:
    for i, s in enumerate(selectors):
        v = pd.to_numeric(smf.loc[smf["selector"] == s, col], errors="coerce").dropna()
        if v.empty:
            continue
        jitter = np.linspace(-0.18, 0.18, len(v)) if len(v) > 1 else np.zeros(1)  # (n,)
        ax.scatter(i + jitter, v, marker=selector_marker(s, selectors),
                   c=selector_color(s, selectors), alpha=0.7, s=36, zorder=3)
        ax.errorbar([i + 0.3], [v.mean()], yerr=[v.std(ddof=1) if len(v) > 1 else 0.0],
                    fmt="D", color="black", ms=5, capsize=4, zorder=4)
    ax.axhline(0, color="0.6", lw=0.8, ls="--", zorder=0)
    ax.set_xticks(range(len(selectors)),
                  [f"{s}\n(control)" if s in CONTROLS else s for s in selectors])
    ax.set_xlim(-0.6, len(selectors) - 0.4)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.25, axis="y")


def selectors_png(fin: pd.DataFrame, title: str, path, obj: Objectives | None = None) -> None:
    obj = obj or Objectives()
    smf = fin[(fin["algorithm"] == "smf") & fin["selector"].notna()]
    fig = _figure("selectors")
    cols = [(c, f"{obj.short(c)} {obj.arrow(c)}") for c in obj.metrics()]
    axes = np.atleast_1d(fig.subplots(1, len(cols)))
    selectors = ordered(smf["selector"].unique(), SELECTOR_ORDER)
    for ax, (col, label) in zip(axes, cols):
        if smf.empty:
            _empty(ax, "no finished SMF trials")
            continue
        _strip(ax, smf, col, selectors, label)
    fig.suptitle(f"{title}: SMF row selectors (points: trials; black: mean ± std)")
    _save(fig, path)


def _by_param(ax, smf: pd.DataFrame, pcol: str, ycol: str, selectors: list, xlabel: str,
              ylabel: str) -> None:
    x = pd.to_numeric(smf.get(pcol), errors="coerce") if pcol in smf else None
    if x is None or x.notna().sum() == 0:
        _empty(ax, f"no finished SMF trials with {pcol.removeprefix('params.')}")
        return
    d = smf.assign(_x=x).dropna(subset=["_x"])
    logx = (d["_x"] > 0).all() and d["_x"].nunique() > 1
    groups = list(d.groupby(d["selector"].fillna(""), sort=False))
    for i, (s, g) in enumerate(groups):
        shift = (i - (len(groups) - 1) / 2) * 0.05  # side by side, not on top of each other
        x = g["_x"] * 2.0 ** shift if logx else g["_x"] + shift
        ax.scatter(x, g[ycol], marker=selector_marker(s or None, selectors),
                   c=selector_color(s or None, selectors), alpha=0.75, s=36,
                   label=selector_name(s or None), zorder=3)
    mean = d.groupby("_x")[ycol].mean()
    ax.plot(mean.index, mean.values, color="black", marker="D", ms=5, lw=1.2, label="mean",
            zorder=4)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(d["_x"].unique()), [f"{v:g}" for v in sorted(d["_x"].unique())])
    ax.axhline(0, color="0.6", lw=0.8, ls="--", zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)


def memory_png(fin: pd.DataFrame, title: str, path, obj: Objectives | None = None) -> None:
    obj = obj or Objectives()
    smf = fin[fin["algorithm"] == "smf"]
    selectors = ordered(smf["selector"].unique(), SELECTOR_ORDER)
    fig = _figure("memory")
    axes = fig.subplots(2, 2)
    params = [("params.smf.n_keys", "smf.n_keys (memory = n_keys² slots per layer)"),
              ("params.smf.top_t", "smf.top_t (rows updated per layer per batch)")]
    objectives = [(c, y_label(obj, c)) for c in obj.metrics()[:2]]
    for i, (ycol, ylabel) in enumerate(objectives):
        for j, (pcol, xlabel) in enumerate(params):
            _by_param(axes[i, j], smf, pcol, ycol, selectors, xlabel, ylabel)
    fig.suptitle(f"{title}: SMF memory size and top-t ({len(smf)} finished SMF trials)")
    _save(fig, path)


def hypervolume_png(progress: pd.DataFrame, obj: Objectives, title: str, path, source: str = "") -> None:
    """The sweep's progress (Sweep.progress: one row per ended search trial): the hypervolume of
    the front so far against trials ended and against cumulative compute (device-hours)."""
    fig = _figure("hypervolume")
    axes = fig.subplots(1, 2)
    ref = ", ".join(f"{obj.short(n)} {v:g}" for n, v in obj.reference if v is not None)
    hv = pd.to_numeric(progress.get(HYPERVOLUME, pd.Series(dtype=float)), errors="coerce")
    if progress.empty or hv.notna().sum() == 0:
        for ax in axes:
            _empty(ax, "no hypervolume: no ended search trials, or an objective without a reference point")
    else:
        hours = pd.to_numeric(progress[COMPUTE], errors="coerce") / 3600.0
        for ax, x, xlabel in ((axes[0], progress["trials"], "search trials ended (finished or failed)"),
                              (axes[1], hours, "compute (device-hours: wall × workers × GPUs, or CPUs, per worker)")):
            ax.step(x, hv, where="post", color="#1f77b4", lw=1.8)
            ax.scatter(x, hv, color="#1f77b4", s=14, zorder=3)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("hypervolume of the front")
            ax.grid(alpha=0.25)
        axes[0].set_title(f"by trials (last {hv.dropna().iloc[-1]:.4g})")
        axes[1].set_title(f"by compute ({hours.iloc[-1]:.3g} device-hours in all)")
    objectives = ", ".join(f"{obj.short(n)} {obj.arrow(n)}" for n in obj.names)
    fig.suptitle(f"{title}: hypervolume ({objectives}; reference {ref}"
                 + (f"; {source}" if source else "") + ")", fontsize=10)
    _save(fig, path)
