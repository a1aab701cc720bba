"""Colours per method and markers per selector, shared by the PNG and HTML plots."""
from __future__ import annotations

# fixed colours for the study's methods, so every figure of every sweep reads the same
METHOD_COLORS = {"smf": "#1f77b4", "lora": "#ff7f0e", "full": "#d62728"}
EXTRA_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
# matplotlib marker, plotly symbol; None = a method without a selector (LoRA, full FT)
SELECTOR_MARKERS = {None: ("o", "circle"), "kl": ("s", "square"), "tfidf": ("^", "triangle-up"),
                    "tf": ("v", "triangle-down"), "random": ("X", "x")}
EXTRA_MARKERS = [("P", "cross"), ("D", "diamond"), ("*", "star"), ("h", "hexagon"),
                 ("<", "triangle-left"), (">", "triangle-right")]
# selector colours for SMF-only figures (selectors.png, memory.png); controls in muted tones
SELECTOR_COLORS = {"kl": "#1f77b4", "tfidf": "#2ca02c", "tf": "#7f7f7f", "random": "#9467bd"}
BASE_LABEL = "base model"
NO_SELECTOR = "—"


def method_color(method: str, methods: list) -> str:
    """methods: every method of the sweep in display order (fixes the extra colours)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    extra = [m for m in methods if m not in METHOD_COLORS]
    return EXTRA_COLORS[extra.index(method) % len(EXTRA_COLORS)] if method in extra else "#000000"


def selector_marker(selector, selectors: list, plotly: bool = False) -> str:
    """selectors: every selector of the sweep in display order; None/NaN = no selector."""
    key = selector if isinstance(selector, str) else None
    if key in SELECTOR_MARKERS:
        return SELECTOR_MARKERS[key][int(plotly)]
    extra = [s for s in selectors if s not in SELECTOR_MARKERS]
    i = extra.index(key) if key in extra else 0
    return EXTRA_MARKERS[i % len(EXTRA_MARKERS)][int(plotly)]


def selector_color(selector, selectors: list) -> str:
    if selector in SELECTOR_COLORS:
        return SELECTOR_COLORS[selector]
    extra = [s for s in selectors if s not in SELECTOR_COLORS]
    i = extra.index(selector) if selector in extra else 0
    return EXTRA_COLORS[(i + 3) % len(EXTRA_COLORS)]


def selector_name(selector) -> str:
    return selector if isinstance(selector, str) else NO_SELECTOR


def axis_label(obj, name: str) -> str:
    """'forgetting (mean of TriviaQA drop in pp and WikiText increase in %)  ← better'."""
    return f"{obj.label(name)}  " + ("← better" if obj.mode(name) == "min" else "better →")


def y_label(obj, name: str) -> str:
    return f"{obj.label(name)}  {obj.arrow(name)}"


def panels(obj) -> tuple[str, list[tuple[str, str]]]:
    """The Pareto figure of a sweep's objectives (smf_sweep.objectives.Objectives): y = the first
    objective; one panel per x = each other objective, then forgetting and each forgetting probe's
    delta. Returns (y column, [(x column, x label)]); directions: obj.mode(column)."""
    y = obj.names[0]
    return y, [(x, axis_label(obj, x)) for x in obj.metrics() if x != y]
