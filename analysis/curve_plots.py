"""curves.png and equal_gain.png (matplotlib, Agg canvas, fixed pixel sizes as in analysis.plots).

curves.png (1600×900): top, one panel per method: each trial's curve in the plane of the first two
objectives with curves (gain vs forgetting by default), in step order (line + markers, end of
training large, black edge), the method's checkpoint front as a step line; bottom: kl_general
against step (one line per trial) and forgetting against kl_general (every checkpoint).
equal_gain.png (1600×450): forgetting and each carried per-probe value at each gain level, mean
± 95 % CI over seeds per method (SMF per selector; analysis.equal_gain); a panel whose means span
orders of magnitude (a wrecked model beside the rest) is drawn on a symlog axis, and says so.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.lines import Line2D

from analysis import curves
from analysis.curve_report import CurveAnalysis, label
from analysis.plots import DPI, _empty, _save, front_line
from analysis.style import method_color, selector_marker, selector_name, y_label
from analysis.summary import CONTROLS, METHOD_ORDER, SELECTOR_ORDER, ordered
from smf_sweep.objectives import FORGETTING, GAIN, Objectives

SIZES = {"curves": (16, 9), "equal_gain": (16, 4.5)}  # inches; px = x DPI


def _ylabel(obj: Objectives, c: str) -> str:
    """A y label short enough for a 4-inch panel: forgetting without its definition (the x axes and
    table.md spell it out)."""
    return (obj.short(c) if c == FORGETTING else label(obj, c)) + ("" if c == curves.KL else f"  {obj.arrow(c)}")


def _figure(name: str) -> Figure:
    fig = Figure(figsize=SIZES[name], dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _paths(ax, p: pd.DataFrame, m: str, methods, selectors, y: str, x: str, obj: Objectives) -> None:
    color = method_color(m, methods)
    sub = p[p["method"] == m]
    for _, g in sub.groupby("run_id", sort=False):
        g = g.dropna(subset=[x, y]).sort_values("step")
        if g.empty:
            continue
        mk = selector_marker(g["selector"].iloc[0], selectors)
        ax.plot(g[x], g[y], color=color, lw=0.9, alpha=0.55, marker=mk, ms=3, zorder=2)
        ax.scatter(g[x].iloc[-1:], g[y].iloc[-1:], color=color, marker=mk, s=70, edgecolors="black",
                   linewidths=1.0, zorder=4)
    front = front_line(sub, obj, y, x)
    ax.step(front[x], front[y], where="post", color="black", lw=1.4, alpha=0.8, zorder=3)
    ax.axhline(0, color="0.6", lw=0.8, ls="--", zorder=0)
    ax.axvline(0, color="0.6", lw=0.8, ls="--", zorder=0)
    ax.set_title(f"{m}: {sub['run_id'].nunique()} trials, {len(sub)} checkpoints", fontsize=10)
    ax.set_xlabel(label(obj, x) + f"  {obj.arrow(x)}")
    ax.set_ylabel(y_label(obj, y))
    ax.grid(alpha=0.25)


def curves_png(a: CurveAnalysis, obj: Objectives, title: str, path) -> None:
    p = a.points
    methods = ordered(p["method"].unique(), METHOD_ORDER)
    selectors = ordered(p["selector"].unique(), SELECTOR_ORDER)
    fig = _figure("curves")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.15, 1])
    tops = np.atleast_1d(top.subplots(1, max(len(methods), 1)))
    yx = curves.axes(p, obj)
    for ax, m in zip(tops, methods):
        if yx is None:
            _empty(ax, "fewer than two objectives have curves")
        else:
            _paths(ax, p, m, methods, selectors, *yx, obj)
    k_step, k_forget = bottom.subplots(1, 2)
    target = obj.forgetting_metrics()[0]
    has_kl = curves.KL in p and p[curves.KL].notna().any()
    if not has_kl:
        for ax in (k_step, k_forget):
            _empty(ax, "no kl_general curves")
    else:
        for m in methods:
            color = method_color(m, methods)
            for _, g in p[p["method"] == m].groupby("run_id", sort=False):
                g = g.sort_values("step")
                k_step.plot(g["step"], g[curves.KL], color=color, lw=0.9, alpha=0.6)
            for s, g in p[p["method"] == m].groupby(p["selector"].fillna(""), sort=False):
                k_forget.scatter(g[curves.KL], g[target], color=color, marker=selector_marker(s or None, selectors),
                                 s=16, alpha=0.6)
        k_step.set_xlabel("step (optimizer steps of the trial)")
        k_step.set_ylabel(label(obj, curves.KL))
        k_step.set_title("KL drift from the base model on general text")
        k_forget.set_xlabel(label(obj, curves.KL))
        k_forget.set_ylabel(_ylabel(obj, target))
        rho = a.drift.set_index("method")["spearman"].get(methods[0] if len(methods) == 1 else "all methods", np.nan)
        k_forget.set_title(f"{obj.short(target)} against KL drift (every checkpoint; Spearman ρ {rho:.2f})")
        for ax in (k_step, k_forget):
            ax.grid(alpha=0.25)
    handles = [Line2D([], [], color=method_color(m, methods), lw=1.5, label=m) for m in methods]
    handles += [Line2D([], [], color="0.35", marker=selector_marker(s, selectors), ls="none",
                       label=f"selector {s}") for s in selectors]
    handles += [Line2D([], [], color="0.35", marker="o", ms=9, markeredgecolor="black", ls="none",
                       label="end of training"),
                Line2D([], [], color="black", lw=1.4, label="front of the method's checkpoints")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    fig.suptitle(f"{title}: learning–forgetting curves (probe subsets, relative to the base model)")
    _save(fig, path)


def spans_decades(values: pd.Series) -> bool:
    """Whether a panel's means span orders of magnitude: the largest above 50 × max(1, the median)."""
    v = values.dropna().abs()
    return not v.empty and v.max() > 50 * max(1.0, float(v.median()))


def equal_gain_png(a: CurveAnalysis, obj: Objectives, title: str, path) -> None:
    """Panels: each comparison's key (forgetting), then the first comparison's carried columns."""
    first = a.comparisons[0]
    panels = [(c, c.key) for c in a.comparisons] + [(first, x) for x in first.cols]
    fig = _figure("equal_gain")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    methods = ordered(a.points["method"].unique(), METHOD_ORDER)
    selectors = ordered(a.points["selector"].unique(), SELECTOR_ORDER)
    span = (max(a.gains) - min(a.gains)) if len(a.gains) > 1 else 1.0
    for ax, (c, col) in zip(axes, panels):
        groups = list(c.summary.groupby(["method", "selector"], sort=False, dropna=False))
        for i, ((m, s), g) in enumerate(groups):
            g = g[g["n"] > 0]
            if g.empty:
                continue
            dx = (i - (len(groups) - 1) / 2) * 0.012 * span  # side by side, not on top of each other
            err = g[col + ":ci"].fillna(0.0)
            ax.errorbar(g[GAIN] + dx, g[col], yerr=err, color=method_color(m, methods),
                        marker=selector_marker(s, selectors), ms=6, capsize=3, lw=1.3,
                        ls="--" if s in CONTROLS else "-",
                        label=m if not isinstance(s, str) else f"{m} · {selector_name(s)}")
        ax.axhline(0, color="0.6", lw=0.8, ls="--", zorder=0)
        ax.set_xticks(a.gains)
        ax.set_xlabel(label(obj, GAIN).replace("gain", "gain level g"))
        wide = spans_decades(c.summary[col])      # a wrecked model's forgetting (×1000) would flatten every other method
        ax.set_ylabel(_ylabel(obj, col) + (" (symlog)" if wide else ""))
        if wide:
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"{obj.short(col) if col != curves.KL else 'KL drift'} at gain g", fontsize=10)
        ax.grid(alpha=0.25)
    if not any(ax.get_legend_handles_labels()[0] for ax in axes):
        for ax in axes:
            _empty(ax, "no trial reached any gain level")
    else:
        h, lab = axes[0].get_legend_handles_labels()
        fig.legend(h, lab, loc="outside right upper", fontsize=9)
    fig.suptitle(f"{title}: forgetting at equal gain (best trial per seed; mean ± 95 % CI over seeds,"
                 " Student t; dashed: control selectors)", fontsize=10)
    _save(fig, path)
