"""Figures: a 2-D map of an embeddings file and a bar chart of a benchmark result.

matplotlib is an optional dependency (`pip install matplotlib`, or the `plot` extra: `pip install -e '.[plot]'` in
a clone); it is imported only when a figure is drawn, and a missing matplotlib raises UsageError. Figures are drawn
with the Agg canvas on a private `matplotlib.figure.Figure` (pyplot is never used, so no global backend or figure
state is touched), and are written atomically: the output appears whole or not at all.

    plot_embeddings("queries.h5", "map.png", color_by="order")            # PCA, coloured by the HDF5's orders
    plot_embeddings("queries.h5", "bins.png", clusters_tsv="clusters.tsv")  # coloured by `barcodetool cluster`
    plot_benchmark("benchmark.json", "benchmark.png")                     # `barcodetool benchmark --json`
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .embedding import read_embedding_rows
from .errors import InputError, UsageError
from .io.atomic import atomic_path, check_outputs_distinct
from .taxonomy import RANKS

log = logging.getLogger("barcodetool")

COLOR_BY = RANKS + ("bin", "cluster")
METHODS = ("pca", "umap")
FIGURE_FORMATS = ("png", "svg", "pdf")
DEFAULT_TOP = 10
MAX_TOP = 20
DEFAULT_MAX_POINTS = 200_000
OTHER_COLOR = "#b8b8b8"      # categories beyond the top N
UNKNOWN_COLOR = "#e2e2e2"    # no label at all
TOOL_COLORS = {"barcodetool": "#1f77b4", "vsearch": "#ff7f0e", "blast": "#2ca02c"}
TOOL_TITLES = {"barcodetool": "barcodetool", "vsearch": "VSEARCH", "blast": "BLAST"}
INSTALL_HINT = "install matplotlib (pip install matplotlib; in a clone: pip install -e '.[plot]')"


# ============================================================================================ plumbing
def _matplotlib():
    """(Figure, FigureCanvasAgg), or UsageError when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # not its font-cache notes in our log
    return Figure, FigureCanvasAgg


def require_matplotlib() -> None:
    """UsageError when matplotlib is not installed (checked by the commands before anything else)."""
    _matplotlib()


def _figure_format(out: str | os.PathLike) -> str:
    suffix = Path(out).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in FIGURE_FORMATS:
        raise UsageError(f"{out}: cannot write a .{suffix} figure; name the output .png, .svg or .pdf")
    return suffix


def _save(figure, canvas_class, out: str | os.PathLike, dpi: int) -> Path:
    """Render with Agg and write atomically (the temporary name has no figure suffix: give the format)."""
    fmt = _figure_format(out)
    canvas_class(figure)
    with atomic_path(out) as temporary:
        figure.savefig(temporary, format=fmt, dpi=dpi, bbox_inches="tight", facecolor="white",
                       metadata={"Software": "barcodetool"} if fmt == "png" else None)
    return Path(out)


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i) for i in range(n)]


# ============================================================================================ embeddings map
def read_cluster_labels(path: str | os.PathLike, column: str = "cluster") -> tuple[dict[str, str], dict[str, str]]:
    """Labels of a `barcodetool cluster` TSV (or any TSV/CSV with `id` and `column` columns): id -> label.

    Returns (labels, reference BIN per label), the second filled from a `reference_bin` column when there is one
    (a cluster's matched BIN, or `new`)."""
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8", errors="replace", newline="")
    except FileNotFoundError:
        raise InputError("file not found", path=str(path), fix="check the path") from None
    except OSError as error:
        raise InputError(f"cannot read ({error.strerror or error})", path=str(path)) from None
    with handle:
        header_line = handle.readline()
        delimiter = "\t" if "\t" in header_line else ","
        header = [h.strip().lstrip("\ufeff") for h in next(csv.reader([header_line], delimiter=delimiter), [])]
        lowered = [h.lower() for h in header]
        if "id" not in lowered or column.lower() not in lowered:
            raise InputError(f"needs an `id` and a `{column}` column (header: {', '.join(header) or 'empty'})",
                             path=str(path), fix="give the TSV written by `barcodetool cluster`")
        id_at, label_at = lowered.index("id"), lowered.index(column.lower())
        bin_at = lowered.index("reference_bin") if "reference_bin" in lowered else None
        labels: dict[str, str] = {}
        bins: dict[str, str] = {}
        for line_number, row in enumerate(csv.reader(handle, delimiter=delimiter), start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(id_at, label_at):
                raise InputError(f"line {line_number} has {len(row)} fields, fewer than the header's "
                                 f"{len(header)}", path=str(path))
            label = row[label_at].strip()
            labels[row[id_at].strip()] = label
            if bin_at is not None and len(row) > bin_at and row[bin_at].strip():
                bins.setdefault(label, row[bin_at].strip())
    if not labels:
        raise InputError("no rows", path=str(path))
    return labels, bins


def project(embeddings: np.ndarray, method: str = "pca", *, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """2-D coordinates of L2-normalised embeddings (cosine geometry) and the two axis titles."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose pca or umap")
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    x = x / norms
    n = len(x)
    if method == "umap":
        try:
            import umap  # umap-learn
        except ImportError:
            raise UsageError("--method umap needs umap-learn, which is not installed (pip install umap-learn); "
                             "or use --method pca") from None
        if n < 4:
            raise UsageError(f"UMAP needs at least 4 barcodes, the file holds {n}; use --method pca")
        reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=min(15, n - 1), random_state=seed)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64), ["UMAP 1", "UMAP 2"]
    if n < 2:
        return np.zeros((n, 2)), ["PC1", "PC2"]
    from sklearn.decomposition import PCA

    components = min(2, n, x.shape[1])
    pca = PCA(n_components=components, random_state=seed)
    coords = pca.fit_transform(x)
    if components < 2:
        coords = np.hstack([coords, np.zeros((n, 2 - components))])
    ratios = list(pca.explained_variance_ratio_) + [0.0] * (2 - components)
    return coords, [f"PC{i + 1} ({100 * r:.1f}% of variance)" for i, r in enumerate(ratios)]


@dataclass
class Categories:
    """Per-point category index for drawing: 0..top-1 coloured, `other`, `unknown`."""

    names: list[str]              # the coloured categories, most frequent first
    counts: list[int]
    code: np.ndarray              # int [n]: 0..len(names)-1, OTHER or UNKNOWN
    other_labels: int = 0         # distinct labels folded into "other"
    other_count: int = 0
    unknown_count: int = 0

    OTHER = -1
    UNKNOWN = -2


def categorize(labels: Sequence[str], top: int = DEFAULT_TOP) -> Categories:
    """The `top` most frequent non-empty labels get a code each (ties by name); the rest are other/unknown."""
    values, counts = np.unique(np.asarray([label or "" for label in labels], dtype=object), return_counts=True)
    pairs = sorted(((str(v), int(c)) for v, c in zip(values, counts) if v != ""), key=lambda p: (-p[1], p[0]))
    chosen = pairs[:top]
    lookup = {name: i for i, (name, _) in enumerate(chosen)}
    code = np.fromiter((lookup.get(label, Categories.UNKNOWN if not label else Categories.OTHER)
                        for label in labels), dtype=np.int64, count=len(labels))
    return Categories(names=[p[0] for p in chosen], counts=[p[1] for p in chosen], code=code,
                      other_labels=len(pairs) - len(chosen), other_count=int((code == Categories.OTHER).sum()),
                      unknown_count=int((code == Categories.UNKNOWN).sum()))


def _auto_color_by(data, clusters_tsv) -> str | None:
    if clusters_tsv is not None:
        return "cluster"
    for rank in ("order", "family", "genus", "class", "species", "phylum", "subfamily"):
        if any(data.taxonomy.get(rank, [])):
            return rank
    if data.bins and any(data.bins):
        return "bin"
    return None


def embedding_labels(data, color_by: str | None, clusters_tsv: str | os.PathLike | None = None
                     ) -> tuple[list[str], dict[str, str], str]:
    """(label per point, display name per label, what they are) for an EmbeddingSet."""
    if color_by is None:
        return [""] * len(data.ids), {}, ""
    color_by = color_by.lower()
    if color_by not in COLOR_BY:
        raise UsageError(f"cannot colour by {color_by!r}; choose a rank ({', '.join(RANKS)}), bin or cluster")
    if color_by == "cluster":
        if clusters_tsv is None:
            raise UsageError("--color-by cluster needs --clusters TSV (the output of `barcodetool cluster`)")
        by_id, bins = read_cluster_labels(clusters_tsv)
        labels = [by_id.get(i, "") for i in data.ids]
        found = sum(1 for label in labels if label)
        if found == 0:
            raise InputError("none of its ids is in the embeddings file", path=str(clusters_tsv),
                             fix="cluster the same input that was embedded")
        if found < len(labels):
            log.warning(f"{len(labels) - found:,} of {len(labels):,} embedded barcodes are not in "
                        f"{clusters_tsv}; they are drawn as unknown")
        names = {c: f"cluster {c}" + (f" ({bins[c]})" if bins.get(c) else "") for c in set(labels) if c}
        return labels, names, "cluster"
    if clusters_tsv is not None:
        raise UsageError(f"--clusters is only used with --color-by cluster, not {color_by}")
    if color_by == "bin":
        if not data.bins:
            raise UsageError("the embeddings file holds no BINs (the input had no BIN column); colour by a rank "
                             "or by --clusters")
        return list(data.bins), {}, "BIN"
    if color_by not in data.taxonomy or not any(data.taxonomy[color_by]):
        carried = [r for r in RANKS if any(data.taxonomy.get(r, []))] + (["bin"] if data.bins else [])
        raise UsageError(f"the embeddings file holds no {color_by} labels; it carries "
                         f"{', '.join(carried) if carried else 'no taxonomy (embed a table or SINTAX FASTA)'}"
                         "; or colour by --clusters")
    return list(data.taxonomy[color_by]), {}, color_by


def plot_embeddings(h5_path: str | os.PathLike, out_png: str | os.PathLike, color_by: str | None = None,
                    clusters_tsv: str | os.PathLike | None = None, method: str = "pca", *, top: int = DEFAULT_TOP,
                    max_points: int | None = DEFAULT_MAX_POINTS, seed: int = 0, title: str | None = None,
                    dpi: int = 150) -> Path:
    """Draw a 2-D map (PCA, or UMAP with umap-learn) of an embeddings HDF5 file written by `barcodetool embed`.

    Points are coloured by `color_by`: a rank carried in the file (`order`, `genus`, ...), `bin`, or `cluster`
    (labels from `clusters_tsv`, the TSV of `barcodetool cluster`). None picks `cluster` when `clusters_tsv` is
    given, else the first of order, family, genus, ... the file carries, else one colour. The `top` most
    frequent labels get a colour and a legend entry; the others are grey, unlabelled points light grey. Files
    with more than `max_points` barcodes are drawn from a random subset of that size (fixed `seed`); the
    projection is fitted on the same subset. Returns the output path.
    """
    if not 1 <= top <= MAX_TOP:
        raise UsageError(f"top must be between 1 and {MAX_TOP}, got {top}")
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose pca or umap")
    if max_points is not None and max_points < 1:
        raise UsageError(f"max_points must be at least 1, got {max_points}")
    check_outputs_distinct([out_png], [h5_path, clusters_tsv])
    _figure_format(out_png)
    Figure, Canvas = _matplotlib()
    data, n_total = read_embedding_rows(h5_path, max_points, seed)
    n = len(data.ids)
    if n == 0:
        raise InputError("the embeddings file holds no barcodes", path=str(h5_path))
    if n < n_total:
        log.info(f"drawing a random {n:,} of {n_total:,} barcodes")
    if color_by is None:
        color_by = _auto_color_by(data, clusters_tsv)
    labels, display, what = embedding_labels(data, color_by, clusters_tsv)
    coords, axis_titles = project(data.embeddings, method, seed=seed)
    categories = categorize(labels, top)

    figure = Figure(figsize=(8.5, 6.5))
    axes = figure.add_subplot(1, 1, 1)
    size = float(np.clip(3000.0 / max(n, 1), 0.5, 24.0))
    alpha = 0.9 if n < 5000 else 0.5
    colours = _palette(len(categories.names))
    handles = []
    unknown_colour = UNKNOWN_COLOR if what else TOOL_COLORS["barcodetool"]  # no colouring asked: one plain colour
    for code, colour, name in ((Categories.UNKNOWN, unknown_colour, "unlabelled"),
                               (Categories.OTHER, OTHER_COLOR, None)):
        mask = categories.code == code
        if mask.any():
            if name is None:
                name = f"other ({categories.other_labels:,} label{'s' if categories.other_labels != 1 else ''})"
            handles.append(axes.scatter(coords[mask, 0], coords[mask, 1], s=size, c=[colour], alpha=alpha,
                                        linewidths=0, label=f"{name}, n={int(mask.sum()):,}", rasterized=n > 20000))
    grey_handles = handles
    handles = []
    for i, (name, count) in enumerate(zip(categories.names, categories.counts)):
        mask = categories.code == i
        shown = display.get(name, name)
        handles.append(axes.scatter(coords[mask, 0], coords[mask, 1], s=size, color=colours[i], alpha=alpha,
                                    linewidths=0, label=f"{shown}, n={count:,}", rasterized=n > 20000))
    handles += grey_handles[::-1]  # coloured categories first, then other, then unlabelled
    axes.set_xlabel(axis_titles[0])
    axes.set_ylabel(axis_titles[1])
    axes.set_xticks([])
    axes.set_yticks([])
    model = str(data.attrs.get("model_name", "") or "")
    source = str(data.attrs.get("source", "") or Path(h5_path).name)
    heading = title or f"{source}: {n_total:,} barcodes, {method.upper()} of {model or 'the'} embeddings"
    if n < n_total:
        heading += f"\n(a random {n:,} shown)"
    axes.set_title(heading, fontsize=11)
    if handles and what:
        legend = axes.legend(handles=handles, title=what, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                             fontsize=8, title_fontsize=9, frameon=False, markerscale=max(1.0, 6.0 / size ** 0.5))
        for handle in legend.legend_handles if hasattr(legend, "legend_handles") else legend.legendHandles:
            handle.set_alpha(1.0)
    return _save(figure, Canvas, out_png, dpi)


# ============================================================================================ benchmark chart
@dataclass
class Bar:
    tool: str                      # barcodetool, vsearch, blast (colour)
    variant: str                   # what this bar is (tick label), e.g. "1-NN", "top hit", "--id 0.97"
    value: float                   # accuracy or AMI, 0..1
    rate: str = ""                 # annotation: "312 q/s", "1.2 s"
    secondary: bool = False        # a second barcodetool figure of the task (hatched)


@dataclass
class Group:
    title: str
    bars: list[Bar] = field(default_factory=list)


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, NaN, "inf" strings from JSON, bools, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _rate(entry: dict, count: Any = None) -> str:
    qps = _number(entry.get("queries_per_s"))
    if qps is not None:
        return f"{qps:,.0f} q/s" if qps >= 10 else f"{qps:.2g} q/s"
    seconds = _number(entry.get("seconds"))
    n = _number(count)
    if seconds is not None and seconds > 0 and n:
        per_s = n / seconds
        return f"{per_s:,.0f}/s" if per_s >= 10 else f"{per_s:.2g}/s"
    if seconds is not None:
        return f"{seconds:.3g} s"
    return ""


def _tool_of(name: str) -> str:
    lowered = name.lower()
    for tool in TOOL_COLORS:
        if lowered.startswith(tool):
            return tool
    return lowered


def _task_groups(data: dict) -> list[Group]:
    """Groups from `barcodetool benchmark --json` (`tasks` -> task -> tool -> metrics)."""
    tasks = data.get("tasks") or {}
    groups: list[Group] = []
    titles = {"species": "species, seen\n({n} queries)", "genus": "genus, unseen species\n({n} queries)"}
    for name in ("species", "genus"):
        task = tasks.get(name)
        if not isinstance(task, dict):
            continue
        group = Group(titles[name].format(n=task.get("queries", "?")))
        bt = task.get("barcodetool") if isinstance(task.get("barcodetool"), dict) else {}
        knn = f"k-NN, k={data['k']}" if data.get("k") else "k-NN"
        if bt.get("default_method") == "identity":   # since the identity classifier became the default
            bars = (("top_hit_accuracy", "identity top hit", False, "queries_per_s"),
                    ("default_accuracy", "identity", True, "queries_per_s"),
                    ("one_nn_accuracy", "1-NN", False, "one_nn_queries_per_s"),
                    ("knn_accuracy", knn, True, "knn_queries_per_s"))
        else:                                         # older files: 1-NN and the k-NN vote
            bars = (("one_nn_accuracy", "1-NN", False, "queries_per_s"),
                    ("default_accuracy", knn, True, "queries_per_s"))
        for key, variant, secondary, speed in bars:
            value = _number(bt.get(key))
            if value is not None:
                group.bars.append(Bar("barcodetool", variant, value, _rate({"queries_per_s": bt.get(speed)}),
                                      secondary))
        for tool in ("vsearch", "blast"):
            entry = task.get(tool)
            if isinstance(entry, dict):
                value = _number(entry.get("top_hit_accuracy", entry.get("accuracy")))
                if value is not None:
                    group.bars.append(Bar(tool, "top hit", value, _rate(entry)))
        if group.bars:
            groups.append(group)
    bins = tasks.get("bins")
    if isinstance(bins, dict):
        group = Group(f"BIN reconstruction, AMI\n({bins.get('barcodes', '?')} barcodes)")
        count = bins.get("barcodes")
        for key, entry in bins.items():
            if not isinstance(entry, dict):
                continue
            value = _number(entry.get("ami"))
            if value is None:
                continue
            secondary = False
            if key == "barcodetool_true_k":
                variant = f"cosine, true k={bins.get('true_bins', '?')}"
            elif key == "barcodetool_threshold":
                variant, secondary = "cosine, calibrated threshold", True
            elif key == "barcodetool_identity":
                variant = "identity, calibrated threshold"
            elif key.startswith("vsearch_"):
                variant = f"--id {key.split('_', 1)[1]}"
            else:
                variant = key.split("_", 1)[1] if "_" in key else key
            group.bars.append(Bar(_tool_of(key), variant, value, _rate(entry, count), secondary))
        if group.bars:
            groups.append(group)
    # any other task shaped like species/genus: {tool: {accuracy-like: value}}
    for name, task in tasks.items():
        if name in ("species", "genus", "bins") or not isinstance(task, dict):
            continue
        group = Group(name.replace("_", " "))
        for tool, entry in task.items():
            if isinstance(entry, dict):
                for key in ("one_nn_accuracy", "top_hit_accuracy", "accuracy", "ami"):
                    value = _number(entry.get(key))
                    if value is not None:
                        group.bars.append(Bar(_tool_of(tool), key.replace("_accuracy", "").replace("_", "-"),
                                              value, _rate(entry)))
                        break
        if group.bars:
            groups.append(group)
    return groups


METRIC_TITLES = {"species_1nn": "species, seen", "genus_unseen_1nn": "genus, unseen species", "ami": "BIN AMI",
                 "species": "species", "genus": "genus"}


def _tool_groups(tools: dict) -> list[Group]:
    """Groups from a per-tool summary: {"tools": {tool: {metric: value, "queries_per_s": ...}}}."""
    order: list[str] = []
    groups: dict[str, Group] = {}
    for tool, entry in tools.items():
        if not isinstance(entry, dict):
            continue
        for metric, value in entry.items():
            value = _number(value)
            if value is None or metric in ("queries_per_s", "seconds") or metric.endswith("_seconds") \
                    or not 0.0 <= value <= 1.0:
                continue
            if metric not in groups:
                order.append(metric)
                groups[metric] = Group(METRIC_TITLES.get(metric, metric.replace("_", " ")))
            # a tool-level speed is a classification speed: not shown on clustering (AMI) bars
            rate = "" if "ami" in metric.lower() else _rate(entry)
            groups[metric].bars.append(Bar(_tool_of(tool), TOOL_TITLES.get(_tool_of(tool), tool), value, rate))
    return [groups[m] for m in order]


def benchmark_groups(data: dict) -> list[Group]:
    """The bars of a benchmark JSON: `barcodetool benchmark --json` output (tasks -> task -> tool -> metrics),
    or a per-tool summary ({"tools": {tool: {metric: value in 0..1, "queries_per_s": ...}}})."""
    if not isinstance(data, dict):
        raise InputError("a benchmark JSON must hold an object")
    groups = _task_groups(data)
    if not groups and isinstance(data.get("tools"), dict):
        groups = _tool_groups(data["tools"])
    return groups


def _notes(data: dict) -> list[str]:
    notes = []
    for task in (data.get("tasks") or {}).values():
        if not isinstance(task, dict):
            continue
        for tool, entry in task.items():
            if isinstance(entry, dict) and entry.get("note") and tool in TOOL_COLORS:
                note = str(entry["note"]).splitlines()[0][:60]
                text = f"{TOOL_TITLES[tool]}: {note}"
                if text not in notes:
                    notes.append(text)
    return notes


def plot_benchmark(json_path: str | os.PathLike, out_png: str | os.PathLike, *, title: str | None = None,
                   dpi: int = 150) -> Path:
    """Draw a grouped bar chart of a benchmark JSON (`barcodetool benchmark --json`): accuracy per task and AMI
    of BIN reconstruction, barcodetool next to VSEARCH and BLAST, each bar annotated with its value and speed
    (queries/s; barcodes/s for clustering). Tools that did not run are listed under the chart. Returns the path.
    """
    check_outputs_distinct([out_png], [json_path])
    _figure_format(out_png)
    Figure, Canvas = _matplotlib()
    try:
        text = Path(json_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", path=str(json_path), fix="check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read ({error})", path=str(json_path)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON ({error})", path=str(json_path),
                         fix="give the file written by `barcodetool benchmark --json`") from None
    if not isinstance(data, dict):
        raise InputError(f"the JSON holds a {type(data).__name__}, not an object", path=str(json_path),
                         fix="give the file written by `barcodetool benchmark --json`")
    groups = benchmark_groups(data)
    if not groups:
        raise InputError("no accuracy or AMI figures to plot", path=str(json_path),
                         fix="give the file written by `barcodetool benchmark --json`")

    width = 0.8
    slots = sum(len(g.bars) for g in groups) + len(groups) - 1
    figure = Figure(figsize=(max(6.0, 0.75 * slots + 2.0), 5.5))
    axes = figure.add_subplot(1, 1, 1)
    position = 0.0
    ticks, tick_labels, centres = [], [], []
    tools_seen: list[str] = []
    for group in groups:
        start = position
        for bar in group.bars:
            colour = TOOL_COLORS.get(bar.tool, "#7f7f7f")
            hatch = "//" if bar.secondary else None
            axes.bar(position, bar.value, width=width, color=colour, edgecolor="white" if hatch else colour,
                     hatch=hatch, linewidth=0)
            label = f"{100 * bar.value:.1f}%"
            if bar.rate:
                label += f"\n{bar.rate}"
            axes.annotate(label, (position, bar.value), xytext=(0, 3), textcoords="offset points", ha="center",
                          va="bottom", fontsize=7)
            ticks.append(position)
            tick_labels.append(bar.variant)
            if bar.tool not in tools_seen:
                tools_seen.append(bar.tool)
            position += 1.0
        centres.append((start + position - 1.0) / 2.0)
        position += 1.0
    axes.set_xticks(ticks)
    axes.set_xticklabels(tick_labels, fontsize=8, rotation=30, ha="right")
    axes.set_ylim(0.0, 1.18)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_yticklabels([f"{int(v * 100)}%" for v in np.linspace(0, 1, 6)])
    axes.set_ylabel("accuracy (classification) / AMI (clustering)")
    axes.spines["top"].set_visible(False)
    axes.spines["right"].set_visible(False)
    for centre, group in zip(centres, groups):
        axes.text(centre, 1.12, group.title, ha="center", va="bottom", fontsize=9, fontweight="bold")
    from matplotlib.patches import Patch

    axes.legend(handles=[Patch(color=TOOL_COLORS.get(t, "#7f7f7f"), label=TOOL_TITLES.get(t, t)) for t in tools_seen],
                loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    heading = title or "barcodetool benchmark" + (f": model {model.get('model_name')}" if model.get("model_name")
                                                  else "")
    axes.set_title(heading, fontsize=11, pad=34)
    footer = []
    harmonic = data.get("harmonic_mean")
    if isinstance(harmonic, dict) and _number(harmonic.get("barcodetool")) is not None:
        footer.append(f"harmonic mean (species 1-NN, genus 1-NN, AMI true k): "
                      f"{100 * _number(harmonic['barcodetool']):.1f}%")
    footer += _notes(data)
    if footer:
        figure.text(0.01, -0.02, "\n".join(footer), fontsize=8, va="top", ha="left", color="#444444")
    return _save(figure, Canvas, out_png, dpi)
