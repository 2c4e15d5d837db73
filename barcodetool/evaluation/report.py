"""The benchmark's result as a plain-text table (what `barcodetool benchmark` prints)."""

from __future__ import annotations

import math

from .external import VSEARCH_CLUSTER_IDS

Row = tuple[str, str, str, str, str]   # task, method, n, result, queries/s


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}%"


def _rate(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.1f}"


def format_table(result: dict) -> str:
    """A plain-text table of a run_benchmark result."""
    rows: list[Row] = [("task", "method", "n", "result", "queries/s")]
    for name, title in (("species", "species, closed world"), ("genus", "genus, open world")):
        rows += classification_rows(result, name, title)
    rows += bin_rows(result["tasks"].get("bins", {}))
    rows += harmonic_mean_rows(result.get("harmonic_mean", {}))
    return "\n".join(aligned(rows) + footer(result))


def classification_rows(result: dict, name: str, title: str) -> list[Row]:
    """The rows of classification task `name`: barcodetool's methods, then VSEARCH's and BLAST's top hit."""
    task = result["tasks"].get(name, {})
    n = str(task.get("queries", 0))
    bt = task.get("barcodetool")
    if not bt:
        return [(title, "-", n, task.get("note", "-"), "-")]
    rows = []
    extra = f" (assigned {_pct(bt['default_assigned'])}, precision {_pct(bt['default_precision'])})"
    candidates = "+".join(str(c) for c in bt.get("candidates", []))
    if "embedded_fraction" in bt:
        candidates += f", {_pct(bt['embedded_fraction'])} embedded"
    rows.append((title, f"barcodetool identity, default (candidates {candidates})", n,
                 _pct(bt["default_accuracy"]) + extra, _rate(bt["queries_per_s"])))
    if name == "genus" and "species_left_empty" in bt:
        rows.append((title, "barcodetool identity: species left empty", n, _pct(bt["species_left_empty"]), ""))
    rows.append((title, "barcodetool identity, top hit (no threshold)", n, _pct(bt["top_hit_accuracy"]),
                 _rate(bt["queries_per_s"])))
    if "kmer_only_accuracy" in bt:
        extra = f" (assigned {_pct(bt['kmer_only_assigned'])}, precision {_pct(bt['kmer_only_precision'])})"
        rows.append((title, "barcodetool identity --kmer-only (no model), default", n,
                     _pct(bt["kmer_only_accuracy"]) + extra, _rate(bt["kmer_only_queries_per_s"])))
        rows.append((title, "barcodetool identity --kmer-only, top hit", n,
                     _pct(bt["kmer_only_top_hit_accuracy"]), _rate(bt["kmer_only_queries_per_s"])))
    rows.append((title, "barcodetool embedding 1-NN (papers' protocol)", n, _pct(bt["one_nn_accuracy"]),
                 _rate(bt.get("one_nn_queries_per_s"))))
    for k, entry in bt.get("profiles", {}).items():
        rows.append((title, f"baseline: {k}-mer count profile 1-NN (cosine)", n, _pct(entry["one_nn_accuracy"]),
                     _rate(entry.get("queries_per_s"))))
    extra = f" (assigned {_pct(bt['knn_assigned'])}, precision {_pct(bt['knn_precision'])})"
    rows.append((title, f"barcodetool embedding k-NN vote k={result.get('k')}", n,
                 _pct(bt["knn_accuracy"]) + extra, _rate(bt.get("knn_queries_per_s"))))
    if name == "genus" and "knn_species_left_empty" in bt:
        rows.append((title, "barcodetool k-NN: species left empty", n, _pct(bt["knn_species_left_empty"]), ""))
    for tool, label in (("vsearch", "VSEARCH top hit"), ("blast", "BLAST top hit")):
        if tool in task:
            entry = task[tool]
            if "top_hit_accuracy" in entry:
                rows.append((title, label, n, _pct(entry["top_hit_accuracy"]), _rate(entry["queries_per_s"])))
            else:
                rows.append((title, label, n, entry.get("note", "-"), "-"))
    return rows + named_rows(task, title, n)


def _named(scores: dict) -> str:
    """Named right (named, precision of the named[, species named])."""
    extra = f", species named {_pct(scores['species_named'])}" if "species_named" in scores else ""
    return (f"{_pct(scores.get('named_right'))} (named {_pct(scores.get('named'))}, "
            f"precision {_pct(scores.get('precision'))}{extra})")


def named_rows(task: dict, title: str, n: str) -> list[Row]:
    """The labels a user gets, side by side: barcodetool's default output (what `classify` writes) and SINTAX's
    at each cutoff, as named right (share named, precision of the named, on the genus task species named)."""
    rows: list[Row] = []
    rank = task.get("rank", "")
    output = task.get("classify_output")
    if output:
        rows.append((title, f"barcodetool classify output, named at {rank}", n, _named(output),
                     _rate(output.get("queries_per_s"))))
    sintax = task.get("sintax")
    if sintax is not None:
        if "cutoffs" not in sintax:
            rows.append((title, "VSEARCH SINTAX", n, sintax.get("note", "-"), "-"))
        for cutoff, scores in sintax.get("cutoffs", {}).items():
            rows.append((title, f"VSEARCH SINTAX cutoff {cutoff}, named at {rank}", n, _named(scores),
                         _rate(sintax.get("queries_per_s"))))
    return rows


def _clustering_row(title: str, method: str, n: str, metrics: dict, bins: dict) -> Row:
    """A clustering's AMI, ARI and match ratio, and its barcodes a second."""
    return (title, method, n,
            f"{_pct(metrics['ami'])} (ARI {_pct(metrics['ari'])}, match {_pct(metrics['match_ratio'])})",
            _rate(bins["barcodes"] / metrics["seconds"] if metrics.get("seconds") else None))


def bin_rows(bins: dict) -> list[Row]:
    """The rows of the BIN reconstruction task: barcodetool's clusterings, then VSEARCH's."""
    rows = []
    title = "BIN reconstruction (AMI)"
    n = str(bins.get("barcodes", 0))
    if "barcodetool_identity" in bins:
        m = bins["barcodetool_identity"]
        rows.append(_clustering_row(title, f"barcodetool identity, distance {m['threshold']:.4g} "
                                           f"({m['clusters']} clusters)", n, m, bins))
    if "barcodetool_true_k" in bins:
        m = bins["barcodetool_true_k"]
        rows.append(_clustering_row(title, f"barcodetool cosine, true k={bins['true_bins']}", n, m, bins))
    if "barcodetool_threshold" in bins:
        m = bins["barcodetool_threshold"]
        rows.append(_clustering_row(title, f"barcodetool cosine, distance {m['threshold']:.4g} "
                                           f"({m['clusters']} clusters)", n, m, bins))
    for key, m in bins.items():
        if key.startswith("profile_") and key.endswith("_true_k"):
            k = key[len("profile_"):-len("_true_k")]
            rows.append(_clustering_row(title, f"baseline: {k}-mer count profile cosine, true k={bins['true_bins']}",
                                        n, m, bins))
    for identity in VSEARCH_CLUSTER_IDS:
        entry = bins.get(f"vsearch_{identity}")
        if entry is not None:
            if "ami" in entry:
                rows.append(_clustering_row(title, f"VSEARCH cluster_fast {identity} ({entry['clusters']} clusters)",
                                            n, entry, bins))
            else:
                rows.append((title, f"VSEARCH cluster_fast {identity}", n, entry.get("note", "-"), ""))
    if "vsearch" in bins:
        rows.append((title, "VSEARCH cluster_fast", n, bins["vsearch"].get("note", "-"), ""))
    return rows


def harmonic_mean_rows(hm: dict) -> list[Row]:
    rows = [("harmonic mean", "barcodetool embedding (species 1-NN, genus 1-NN, AMI true k)", "",
             _pct(hm.get("barcodetool")), "")]
    if "barcodetool_identity" in hm:
        rows.append(("harmonic mean", "barcodetool identity (top-hit species, genus, AMI calibrated)", "",
                     _pct(hm.get("barcodetool_identity")), ""))
    for key, value in hm.items():
        if key.startswith("profile_"):
            rows.append(("harmonic mean", f"baseline: {key[len('profile_'):]}-mer count profile (the same three)", "",
                         _pct(value), ""))
    if "vsearch" in hm:
        rows.append(("harmonic mean", "VSEARCH (top-hit species, genus, cluster_fast 0.97 AMI)", "",
                     _pct(hm.get("vsearch")), ""))
    return rows


def aligned(rows: list[Row]) -> list[str]:
    """The rows as lines of left-aligned columns (the last right-aligned), a rule under the header."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    lines = []
    for number, row in enumerate(rows):
        lines.append("  ".join(str(cell).ljust(widths[i]) if i < 4 else str(cell).rjust(widths[i])
                               for i, cell in enumerate(row)).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def footer(result: dict) -> list[str]:
    """A blank line, the model, threads and reference line, and the external tools' versions when compared."""
    model = result.get("model", {})
    tools = result.get("tools", {})
    lines = ["", f"model {model.get('model_name')} (sha256 {str(model.get('model_sha256', ''))[:12]}), "
                 f"{result.get('threads')} threads; reference: {result['unique_barcodes'].get('train', 0):,} unique "
                 f"train barcodes embedded and calibrated in {result.get('reference_seconds', 0):.1f} s"]
    if "profiles_left_out" in result:
        lines.append(f"baselines left out: {result['profiles_left_out']}")
    if tools:
        shown = ", ".join(f"{k}: {v}" for k, v in tools.items() if not k.startswith("blast_"))
        lines.append(f"tools: {shown}")
    if any("classify_output" in result["tasks"].get(name, {}) for name in ("species", "genus")):
        lines.append("named at a rank: share of the queries named right (share named, precision of the named; "
                     "genus task: share given a species, necessarily wrong)")
    sintax = result["tasks"].get("species", {}).get("sintax", {})
    if "randseed" in sintax:
        lines.append(f"SINTAX: one vsearch --sintax run per task, --randseed {sintax['randseed']}, "
                     f"{sintax['threads']} thread; a rank is named where its bootstrap support reaches the cutoff")
    return lines
