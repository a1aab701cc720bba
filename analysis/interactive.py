"""pareto.html: the Pareto panels in plotly, self-contained (plotly.js inlined, works offline).

Hovering a point shows the trial's method, selector, seed, config and MLflow run id.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.plots import front_line
from analysis.style import BASE_LABEL, method_color, panels, selector_marker, selector_name, y_label
from analysis.summary import SELECTOR_ORDER, ordered
from smf_sweep.objectives import Objectives


def hover(obj: Objectives, y: str, x: str) -> str:
    return ("<b>%{customdata[0]}</b> (%{customdata[1]}, selector %{customdata[2]}, seed "
            f"%{{customdata[3]}})<br>%{{customdata[4]}}<br>{obj.short(y)} %{{y:.2f}}, {obj.short(x)} %{{x:.2f}}<br>"
            "MLflow run %{customdata[5]}<extra></extra>")


def _custom(g: pd.DataFrame) -> list:
    return [[str(t), str(m), selector_name(s), "—" if pd.isna(seed) else str(int(seed)),
             c or "—", rid]
            for t, m, s, seed, c, rid in zip(g["trial_id"], g["method"], g["selector"], g["seed"],
                                             g["config"], g["run_id"])]


def _panel(fig, col: int, fin: pd.DataFrame, methods, selectors, obj, y, xcol) -> None:
    hov = hover(obj, y, xcol)
    first = col == 1  # one legend entry per trace group, taken from the first panel
    for m in methods:
        sub = fin[fin["method"] == m]
        if sub.empty:
            continue
        color = method_color(m, methods)
        for s, g in sub.groupby(sub["selector"].fillna(""), sort=False):
            fig.add_trace(go.Scatter(
                x=list(g[xcol]), y=list(g[y]), mode="markers", customdata=_custom(g),
                hovertemplate=hov, legendgroup=f"{m}/{s}", showlegend=first,
                name=f"{m} · {selector_name(s or None)}",
                marker=dict(color=color, symbol=selector_marker(s or None, selectors, True),
                            size=9, opacity=0.85, line=dict(color="white", width=0.5))),
                row=1, col=col)
        front = front_line(sub, obj, y, xcol)
        fig.add_trace(go.Scatter(
            x=list(front[xcol]), y=list(front[y]), mode="lines", line_shape="hv",
            line=dict(color=color, width=2), name=f"{m} front", legendgroup=f"{m} front",
            showlegend=first, customdata=_custom(front), hovertemplate=hov), row=1, col=col)
    fig.add_trace(go.Scatter(
        x=[0], y=[0], mode="markers+text", text=[BASE_LABEL], textposition="bottom right",
        marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1)),
        name=f"{BASE_LABEL} (0, 0)", legendgroup="base", showlegend=first,
        hovertemplate=f"{BASE_LABEL}<extra></extra>"), row=1, col=col)
    dflt = fin[fin["default_point"]].drop_duplicates("config_key")
    if len(dflt):
        labels = [f"{m} default" + (f" ({s})" if isinstance(s, str) else "")
                  for m, s in zip(dflt["method"], dflt["selector"])]
        fig.add_trace(go.Scatter(
            x=list(dflt[xcol]), y=list(dflt[y]), mode="markers+text", text=labels,
            textposition="top right", customdata=_custom(dflt), hovertemplate=hov,
            marker=dict(symbol="circle-open", size=16, color="black"), name="default point",
            legendgroup="default", showlegend=first), row=1, col=col)


def pareto_html(fin: pd.DataFrame, methods: list, title: str, path, budget: float,
                obj: Objectives | None = None) -> None:
    obj = obj or Objectives()
    selectors = ordered(fin["selector"].unique(), SELECTOR_ORDER)
    y, xs = panels(obj)
    fig = make_subplots(rows=1, cols=len(xs), horizontal_spacing=0.06, subplot_titles=[
        f"{obj.short(y)} vs {obj.short(x)}" for x, _ in xs])
    for i, (xcol, xlabel) in enumerate(xs, start=1):
        _panel(fig, i, fin, methods, selectors, obj, y, xcol)
        fig.update_xaxes(title_text=xlabel, zeroline=True, zerolinecolor="#999", row=1, col=i)
        fig.update_yaxes(title_text=y_label(obj, y), zeroline=True, zerolinecolor="#999", row=1, col=i)
        if xcol in obj.forgetting_metrics():
            fig.add_vline(x=obj.budget_for(xcol, budget), line_dash="dot", line_color="#555", row=1, col=i,
                          annotation_text=f"budget {budget:g}")
    fig.update_layout(title=title, height=560, width=1800,
                      template="plotly_white", legend=dict(groupclick="toggleitem"))
    fig.write_html(path, include_plotlyjs=True, full_html=True)  # inlined: no CDN needed
