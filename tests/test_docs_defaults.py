"""The defaults the documentation states are the code's: the Click options' defaults agree with the library's
(the option dataclasses, the functions the commands call, the named constants), docs/cli.md shows them, and the
numbers the prose of the other pages states about options and limits (candidates, --embed-below, precision,
min confidence, neighbours, chunk and batch sizes, calibration sizes, thresholds, the default model per device)
are found with regular expressions anchored on the option names and compared with the constants, so a default
changed in the code fails here until the pages say the new value. A reworded sentence fails too: update its
pattern here with it."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import re
from pathlib import Path

import click
import pytest

from barcodetool.classify import CHUNK_RECORDS, ClassifyOptions, classify, classify_records, load_inference_model
from barcodetool.cli import main
from barcodetool.cluster import (BRIDGED_CUT, DEFAULT_DISTANCE_THRESHOLD, DEFAULT_IDENTITY_DISTANCE_THRESHOLD,
                                 FULL_LINKAGE_LIMIT, GRAPH_NEIGHBOURS, IDENTITY_CLUSTER_GRID, IDENTITY_GRAPH_NEIGHBOURS,
                                 ClusterOptions, cluster, cluster_records)
from barcodetool.embedding import (EMBEDDINGS_FORMAT, EMBEDDINGS_FORMAT_VERSION, embed_file, embed_records_to_h5,
                                   read_embedding_rows)
from barcodetool.evaluation import run_benchmark
from barcodetool.io import ReadOptions, read_barcodes
from barcodetool.model.onnx import ONNX_FORMAT, ONNX_FORMAT_VERSION, OPSET, load_onnx_model
from barcodetool.model.tokenizer import TokenizerConfig
from barcodetool.model.weights import (DEFAULT_CPU_EMBED_MODEL, DEFAULT_CPU_MODEL, DEFAULT_GPU_MODEL,
                                       available_models)
from barcodetool.plot import plot_embeddings
from barcodetool.reference import BuildOptions, build_reference
from barcodetool.reference.calibrate import (CALIBRATION_NEIGHBOURS, CALIBRATION_QUERIES, CLUSTER_CALIBRATION_SIZE,
                                             IDENTITY_CALIBRATION_CANDIDATES, IDENTITY_CALIBRATION_QUERIES,
                                             IDENTITY_CLUSTER_CALIBRATION_SIZE)
from barcodetool.reference.decide import (DEFAULT_K, DEFAULT_MIN_CONFIDENCE, DEFAULT_PRECISION,
                                          IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER,
                                          IDENTITY_CANDIDATES_WIDE, IDENTITY_EMBED_BELOW)
from barcodetool.reference.index import REFERENCE_FORMAT, REFERENCE_FORMAT_VERSION
from barcodetool.search.identity import BARCODE_REGION, DEFAULT_COVERAGE
from barcodetool.search.kmer_index import KMER_FALLBACK_BELOW, KMER_FALLBACK_DF, KMER_K, KMER_MAX_DF
from barcodetool.search.knn import SEARCH_BLOCK_ELEMENTS, knn_search
from barcodetool.train.config import TrainConfig
from barcodetool.train.data import read_corpus

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def prose(name: str, *, code: bool = True) -> str:
    """A page (relative to the repository root) with every run of white space made one space, so that a pattern
    matches across the page's line breaks; `code=False` leaves the fenced code blocks out."""
    text = (ROOT / name).read_text(encoding="utf-8")
    if not code:
        text = re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.M | re.S)
    return " ".join(text.split())


def stated(name: str, pattern: str) -> list[tuple[str, ...]]:
    """Every match of `pattern` in page `name` (its groups); at least one must exist."""
    found = [m.groups() for m in re.finditer(pattern, prose(name))]
    assert found, (f"{name} no longer states what this test checks (pattern {pattern!r}): reword the pattern in "
                   f"tests/test_docs_defaults.py together with the page")
    return found


def number(text: str) -> float:
    """A number as the pages write it: 5,000 / 0.95 / 95% / 32M (mebi)."""
    text = text.replace(",", "")
    if text.endswith("%"):
        return float(text[:-1]) / 100
    if text.endswith("M"):
        return float(text[:-1]) * (1 << 20)
    return float(text)


def check(name: str, pattern: str, *expected) -> None:
    """Each match of `pattern` in `name` states the numbers `expected`, group by group."""
    for groups in stated(name, pattern):
        assert len(groups) == len(expected), pattern
        for value, want in zip(groups, expected):
            assert math.isclose(number(value), want), (f"{name} states {value} where the code has {want} "
                                                       f"(pattern {pattern!r})")


# ============================================================================================ Click vs library
def load_generator():
    spec = importlib.util.spec_from_file_location("generate_cli_reference", DOCS / "generate_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def commands() -> dict[str, tuple[click.Command, click.Context]]:
    generator = load_generator()
    ctx = click.Context(main, info_name="barcodetool", **main.context_settings)
    return {c.command_path: (command, c) for command, c in generator.walk(main, ctx)}


def options(path: str) -> dict[str, object]:
    """The defaults of a command's options, by parameter name (flags: False unless set otherwise)."""
    command, ctx = commands()[path]
    return {p.name: default(p, ctx) for p in command.get_params(ctx) if isinstance(p, click.Option)}


UNSET = getattr(click.core, "UNSET", None)                    # Click 8.3's "no default given"


def default(option: click.Option, ctx: click.Context):
    value = option.get_default(ctx, call=False)
    if UNSET is not None and value is UNSET:
        return False if option.is_flag and not option.secondary_opts else None
    return value


# what each command hands its options to: the defaults there must be the option's
LIBRARY = {
    "barcodetool classify": (ClassifyOptions, ReadOptions, load_inference_model),
    "barcodetool cluster": (ClusterOptions, cluster_records, ReadOptions, load_inference_model),
    "barcodetool embed": (embed_file, ReadOptions, load_inference_model),
    "barcodetool reference build": (BuildOptions, ReadOptions, load_inference_model),
    "barcodetool train": (TrainConfig, TokenizerConfig, ReadOptions),
    "barcodetool finetune": (TrainConfig, ReadOptions),
    "barcodetool distill": (TrainConfig, ReadOptions),
    "barcodetool benchmark": (run_benchmark, ReadOptions),
}
RENAMED = {"read_format": "format", "kmer_size": "k"}        # Click parameter -> library name
# the library's None means "the calibration's" or "decided later"; the option states the number itself
NUMBERS = {("barcodetool benchmark", "neighbours"): DEFAULT_K,
           ("barcodetool benchmark", "precision"): DEFAULT_PRECISION,
           ("barcodetool reference build", "neighbours"): DEFAULT_K,
           ("barcodetool reference build", "precision"): DEFAULT_PRECISION,
           ("barcodetool reference build", "min_confidence"): DEFAULT_MIN_CONFIDENCE}
DIFFERENT = {("barcodetool distill", "preset")}              # distill's student is smaller than TrainConfig's preset


def library_default(target, name: str):
    parameter = inspect.signature(target).parameters.get(name)
    if parameter is None or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
        return inspect.Parameter.empty
    return parameter.default


@pytest.mark.parametrize("path", sorted(LIBRARY))
def test_click_defaults_are_the_library_defaults(path):
    compared = 0
    for name, value in options(path).items():
        if (path, name) in NUMBERS:
            assert value == NUMBERS[path, name], f"{path} {name}"
            compared += 1
        if (path, name) in DIFFERENT or value is None:
            continue
        for target in LIBRARY[path]:
            code = library_default(target, RENAMED.get(name, name))
            if code is inspect.Parameter.empty or code is None:
                continue
            assert value == code, (f"{path}: option {name} defaults to {value!r}, "
                                   f"{getattr(target, '__name__', target)} to {code!r}")
            compared += 1
            break
    assert compared >= 3, f"{path}: the mapping to the library found only {compared} options"


# options whose default is None in Click, with the number their help text states by hand: (command, option) -> code
HAND_WRITTEN = {
    ("barcodetool classify", "neighbours"): DEFAULT_K,
    ("barcodetool classify", "precision"): DEFAULT_PRECISION,
    ("barcodetool classify", "min_confidence"): DEFAULT_MIN_CONFIDENCE,
    ("barcodetool classify", "candidates_wide"): IDENTITY_CANDIDATES_WIDE,   # what `reference build` makes
    ("barcodetool cluster", "threshold"): DEFAULT_IDENTITY_DISTANCE_THRESHOLD,
}


def test_defaults_written_into_help_texts():
    seen = set()
    for path, (command, ctx) in commands().items():
        for option in command.get_params(ctx):
            if not isinstance(option, click.Option) or not option.help or default(option, ctx) is not None:
                continue
            match = re.search(r"\[default: ([^\]]*)\]", option.help)
            numbers = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?!\w)", match.group(1)) if match else []
            if not numbers:
                continue
            key = (path, option.name)
            assert key in HAND_WRITTEN, f"{path} {option.opts[0]} states a default by hand: add it to HAND_WRITTEN"
            assert float(numbers[-1]) == HAND_WRITTEN[key], f"{path} {option.opts[0]}: help says {numbers[-1]}"
            seen.add(key)
    assert seen == set(HAND_WRITTEN)


# ============================================================================================ docs/cli.md
def cli_sections() -> dict[str, str]:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parts = re.split(r"^## `(barcodetool[^`]*)`$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def shown_default(option: click.Option, ctx: click.Context) -> str:
    """How Click shows the option's default in --help."""
    if option.is_flag and option.secondary_opts:
        names = option.opts if default(option, ctx) else option.secondary_opts
        return names[0].lstrip("-")
    return str(default(option, ctx))


def test_cli_reference_shows_each_default_of_the_code():
    sections = cli_sections()
    checked = 0
    for path, (command, ctx) in commands().items():
        assert path in sections, f"docs/cli.md has no section for {path}: regenerate it"
        rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| (.*) \|$", sections[path], flags=re.M)}
        for option in command.get_params(ctx):
            if not isinstance(option, click.Option) or option.hidden:
                continue
            row = next((rows[names] for names in rows if option.opts[0] in re.split(r"[ ,/]+", names)), None)
            assert row is not None, f"docs/cli.md: {path} lacks {option.opts[0]}: regenerate it"
            if option.show_default and default(option, ctx) is not None and not (option.is_flag and
                                                                                   not option.secondary_opts):
                found = re.search(r"\[default: ([^;\]]*)", row)
                assert found and found.group(1) == shown_default(option, ctx), (
                    f"docs/cli.md: {path} {option.opts[0]} shows {found and found.group(1)!r}, the code "
                    f"{shown_default(option, ctx)!r}: run `.venv/bin/python docs/generate_cli_reference.py`")
                checked += 1
    assert checked >= 40


def test_cli_reference_names_the_default_models():
    check_models("docs/cli.md", r"`--model auto` \(the default\) picks `([\w-]+)` on a GPU and `([\w-]+)` on a CPU")
    assert stated("docs/cli.md", r"\(`embed` on a CPU: `([\w-]+)`") == [(DEFAULT_CPU_EMBED_MODEL,)]


def check_models(name: str, pattern: str, prefix: str = "") -> None:
    for gpu, cpu in stated(name, pattern):
        assert (prefix + gpu, prefix + cpu) == (DEFAULT_GPU_MODEL, DEFAULT_CPU_MODEL), (
            f"{name}: says {gpu} on a GPU and {cpu} on a CPU; the code: {DEFAULT_GPU_MODEL}, {DEFAULT_CPU_MODEL}")


# ============================================================================================ docs/python-api.md
# the callables whose signatures python-api.md writes out
SIGNATURES = {"ClassifyOptions": ClassifyOptions, "ClusterOptions": ClusterOptions, "BuildOptions": BuildOptions,
              "ReadOptions": ReadOptions, "TrainConfig": TrainConfig, "embed_file": embed_file,
              "embed_records_to_h5": embed_records_to_h5, "read_barcodes": read_barcodes,
              "build_reference": build_reference, "classify": classify, "classify_records": classify_records,
              "cluster_records": cluster_records, "cluster": cluster, "load_inference_model": load_inference_model,
              "plot_embeddings": plot_embeddings, "read_corpus": read_corpus, "load_onnx_model": load_onnx_model,
              "read_embedding_rows": read_embedding_rows, "knn_search": knn_search}


def documented_signatures(name: str) -> list[tuple[str, dict[str, object]]]:
    """(callable, {parameter: documented default}) for each code span `NAME(ARGS)` of the page whose ARGS read as a
    signature: they parse as parameters, and name the callable's parameters in its order from its first one, at
    least three of them (or all): a call such as `load_model(device="cuda")` or `cluster_records(records, model,
    method="cosine")` does not."""
    import barcodetool

    found = []
    for span in re.findall(r"`([^`]+)`", prose(name, code=False)):
        match = re.fullmatch(r"(?:[\w.]+\.)?(\w+)\((.*)\)", span)
        if not match:
            continue
        target = SIGNATURES.get(match.group(1)) or getattr(barcodetool, match.group(1), None)
        if not callable(target) or match.group(1) not in SIGNATURES and match.group(1) not in barcodetool.__all__:
            continue
        try:
            arguments = ast.parse(f"def f({match.group(2)}): pass").body[0].args
        except SyntaxError:
            continue
        real = [name for name, p in inspect.signature(target).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        named = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
        if named != [n for n in real if n in named] or not named or named[0] != real[0] or len(named) < min(3,
                                                                                                          len(real)):
            continue
        defaults = dict(zip([a.arg for a in arguments.posonlyargs + arguments.args][::-1], arguments.defaults[::-1]))
        defaults.update({a.arg: d for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is not None})
        found.append((match.group(1), {key: ast.literal_eval(value) for key, value in defaults.items()}))
    return found


def test_python_api_signatures_state_the_code_defaults():
    seen = {}
    for name, defaults in documented_signatures("docs/python-api.md"):
        target = SIGNATURES.get(name)
        if target is None:
            import barcodetool

            target = getattr(barcodetool, name)
        real = inspect.signature(target).parameters
        for parameter, value in defaults.items():
            assert value == real[parameter].default, (f"docs/python-api.md: {name}({parameter}={value!r}), the "
                                                      f"code's default is {real[parameter].default!r}")
        seen.setdefault(name, set()).update(defaults)
    for name in ("ClassifyOptions", "ClusterOptions", "BuildOptions", "ReadOptions", "embed", "embed_file",
                 "read_barcodes", "build_reference", "classify_records", "load_inference_model", "plot_embeddings"):
        assert name in seen, f"docs/python-api.md no longer writes out the signature of {name}"
    # the option dataclasses of reading, classify and cluster are written out whole
    for name in ("ReadOptions", "ClassifyOptions", "ClusterOptions"):
        fields = set(inspect.signature(SIGNATURES[name]).parameters)
        assert seen[name] == fields, f"docs/python-api.md: {name} lacks {sorted(fields - seen[name])}"


def test_python_api_prose():
    page = "docs/python-api.md"
    assert stated(page, r"load_model\(\) # the default for a CPU: ([\w-]+)") == [(DEFAULT_CPU_MODEL,)]
    assert stated(page, r'`barcodetool.load_model\(device="cuda"\)` loads `([\w-]+)`') == [(DEFAULT_GPU_MODEL,)]
    assert stated(page, r'`task="embed"` picks the default of `embed` instead, `([\w-]+)` on a CPU') == [
        (DEFAULT_CPU_EMBED_MODEL,)]
    assert stated(page, r"barcodetool.embed\(sequences\) with no model uses ([\w-]+) on a CPU") == [
        (DEFAULT_CPU_EMBED_MODEL,)]
    assert stated(page, r"else the reference's calibrated one, else the (bridged cut) \(identity; `BridgedCut`")
    check(page, r"longer than (\d+) nt, they are truncated", TokenizerConfig().max_length)
    models = set(re.findall(r'"(barcodemae-[\w-]+)"', prose(page).split("see `barcodetool.available_models()`")[0]))
    assert models == {m for m in available_models() if m.startswith("barcodemae-")}


# ============================================================================================ docs/faq.md
def test_faq_defaults():
    page = "docs/faq.md"
    check(page, r"the (\d+) reference sequences sharing the most 12-mers with the query \(`--candidates-kmer (\d+)`\)",
          IDENTITY_CANDIDATES_KMER, IDENTITY_CANDIDATES_KMER)
    check(page, r"candidate scores below ([\d.]+) \(`--embed-below ([\d.]+)`", IDENTITY_EMBED_BELOW,
          IDENTITY_EMBED_BELOW)
    check(page, r"the (\d+) nearest to its embedding \(`--candidates-embedding (\d+)`\)",
          IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_EMBEDDING)
    check(page, r"the k nearest embeddings \(`--neighbours`, (\d+) by default\)", DEFAULT_K)
    check(page, r"`--min-confidence` \(([\d.]+) by default[:)]", DEFAULT_MIN_CONFIDENCE)
    check(page, r"\(`--precision`, default ([\d.]+)\)", DEFAULT_PRECISION)
    check(page, r"up to ([\d,]+) per level for identity, ([\d,]+) for the embedding vote",
          IDENTITY_CALIBRATION_QUERIES, CALIBRATION_QUERIES)
    check(page, r"\(up to ([\d,]+) / ([\d,]+) of\) the reference's own barcodes",
          IDENTITY_CLUSTER_CALIBRATION_SIZE, CLUSTER_CALIBRATION_SIZE)
    check(page, r"embeds only the queries whose best k-mer candidate is below (\d+%) identity", IDENTITY_EMBED_BELOW)
    check(page, r"scaled down when the overlap covers less than (\d+%) of the query", DEFAULT_COVERAGE)
    check(page, r"at most \*\*(\d+) nucleotides\*\*", TokenizerConfig().max_length)
    check_models(page, r"`--model auto` \(the default\) picks (\w+) on a GPU and (\w+) on a CPU", "barcodemae-")
    assert stated(page, r"below 95% identity, with `([\w-]+)`") == [(DEFAULT_CPU_MODEL,)]


# ============================================================================================ classify-and-cluster.md
def test_classify_and_cluster_defaults():
    page = "docs/classify-and-cluster.md"
    check(page, r"\[--candidates-embedding (\d+)\] \[--candidates-kmer (\d+)\] \[--embed-below ([\d.]+)\]",
          IDENTITY_CANDIDATES_EMBEDDING, IDENTITY_CANDIDATES_KMER, IDENTITY_EMBED_BELOW)
    check(page, r"\[--precision ([\d.]+)\] \[--min-confidence ([\d.]+)\] \[--neighbours (\d+)\]",
          DEFAULT_PRECISION, DEFAULT_MIN_CONFIDENCE, DEFAULT_K)
    check(page, r"\[--chunk-size (\d+)\]", CHUNK_RECORDS)
    check(page, r"written ([\d,]+) at a time", CHUNK_RECORDS)
    check(page, r"`--candidates-kmer` \((\d+)\)", IDENTITY_CANDIDATES_KMER)
    check(page, r"`--embed-below` \(([\d.]+)\)", IDENTITY_EMBED_BELOW)
    check(page, r"`--candidates-embedding` \((\d+)\)", IDENTITY_CANDIDATES_EMBEDDING)
    check(page, r"`--min-confidence` \(([\d.]+)[:)]", DEFAULT_MIN_CONFIDENCE)
    check(page, r"the default `--min-confidence ([\d.]+)`", DEFAULT_MIN_CONFIDENCE)
    check(page, r"`--neighbours`, default (\d+)", DEFAULT_K)
    check(page, r"`--precision`, default ([\d.]+)", DEFAULT_PRECISION)
    check(page, r"default candidates: (\d+) by embedding, (\d+) by k-mers", IDENTITY_CANDIDATES_EMBEDDING,
          IDENTITY_CANDIDATES_KMER)
    check(page, r"\((\d+) embedding and (\d+) k-mer candidates of up to ([\d,]+) distinct sequences per level",
          IDENTITY_CALIBRATION_CANDIDATES, IDENTITY_CALIBRATION_CANDIDATES, IDENTITY_CALIBRATION_QUERIES)
    check(page, r"candidate numbers \(up to (\d+) \+ (\d+)\)", IDENTITY_CALIBRATION_CANDIDATES,
          IDENTITY_CALIBRATION_CANDIDATES)
    check(page, r"more than (\d+) \+ (\d+) identity candidates or `--neighbours` > (\d+)",
          IDENTITY_CALIBRATION_CANDIDATES, IDENTITY_CALIBRATION_CANDIDATES, CALIBRATION_NEIGHBOURS)
    check(page, r"level = sequence, species, genus; (\d+) neighbours each", CALIBRATION_NEIGHBOURS)
    check(page, r"up to ([\d,]+) per level for identity, ([\d,]+) for knn", IDENTITY_CALIBRATION_QUERIES,
          CALIBRATION_QUERIES)
    check(page, r"the tree is cut at ([\d.]+), and two clusters above that are still joined when their average "
                r"distance is at most ([\d.]+) and at least (\d+) of their cross pairs are within ([\d.]+)",
          BRIDGED_CUT.base, BRIDGED_CUT.top, BRIDGED_CUT.pairs, BRIDGED_CUT.bridge)
    check(page, r"or when both\s+are lone barcodes within ([\d.]+) of each other", BRIDGED_CUT.lone)
    check(page, r"else ([\d.]+) with a warning", DEFAULT_DISTANCE_THRESHOLD)
    check(page, r"the cut of ([\d.]+), ([\d.]+), …, ([\d.]+) that maximises", IDENTITY_CLUSTER_GRID[0],
          IDENTITY_CLUSTER_GRID[1], IDENTITY_CLUSTER_GRID[-1])
    check(page, r"on up to ([\d,]+) of its distinct BIN-labelled sequences, the middle",
          IDENTITY_CLUSTER_CALIBRATION_SIZE)
    check(page, r"on up to ([\d,]+) of its distinct BIN-labelled sequences, searched", CLUSTER_CALIBRATION_SIZE)
    check(page, r"each distinct sequence's (\d+) nearest by embedding and its (\d+) best by shared 12-mers",
          IDENTITY_GRAPH_NEIGHBOURS, IDENTITY_GRAPH_NEIGHBOURS)
    check(page, r"up to \*\*([\d,]+) distinct sequences\*\*", FULL_LINKAGE_LIMIT)
    check(page, r"each point's (\d+) nearest neighbours", GRAPH_NEIGHBOURS)
    check(page, r"skips 12-mers held by more than ([\d,]+) reference sequences", KMER_MAX_DF)
    check(page, r"a cap of ([\d,]+) for queries with fewer than (\d+%) of", KMER_FALLBACK_DF, KMER_FALLBACK_BELOW)
    check(page, r"a block of up to ([\d,]+) queries", inspect.signature(knn_search).parameters["query_block"].default)
    check(page, r"the similarity block holds (\d+M) floats", SEARCH_BLOCK_ELEMENTS)
    check(page, r"min\(1, overlap / \(([\d.]+) × min\(query length, (\d+)\)\)\)", DEFAULT_COVERAGE, BARCODE_REGION)


# ============================================================================================ the other pages
def test_quickstart_and_readme_name_the_default_models():
    check_models("docs/quickstart.md", r"`([\w-]+)` \(the paper's 6 \+ 6 layers\) when PyTorch sees a GPU, "
                                       r"`([\w-]+)` \([^)]*\) on a CPU")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(barcodemae-[\w-]+)` \|[^|]*\| *([^|]*?) *\|", readme, flags=re.M)
    assert {name for name, _ in rows} == {m for m in available_models() if m.startswith("barcodemae-")}
    assert {device: name for name, device in rows if device} == {
        "GPU": DEFAULT_GPU_MODEL, "CPU": DEFAULT_CPU_MODEL, "CPU, `embed`": DEFAULT_CPU_EMBED_MODEL}
    assert stated("docs/quickstart.md", r"except that `embed`\s+on a CPU uses `([\w-]+)`") == [
        (DEFAULT_CPU_EMBED_MODEL,)]


def test_file_formats_numbers():
    page = "docs/file-formats.md"
    check(page, r"\(format name `barcodetool-embeddings`, version (\d+)\)", EMBEDDINGS_FORMAT_VERSION)
    check(page, r"\(format name `barcodetool-reference`, version (\d+)\)", REFERENCE_FORMAT_VERSION)
    assert EMBEDDINGS_FORMAT == "barcodetool-embeddings" and REFERENCE_FORMAT == "barcodetool-reference"
    check(page, r"int32 `\[m, (\d+)\]` \| their (\d+) embedding and (\d+) k-mer candidates",
          IDENTITY_CALIBRATION_CANDIDATES, IDENTITY_CALIBRATION_CANDIDATES, IDENTITY_CALIBRATION_CANDIDATES)
    check(page, r"attributes `k` \((\d+)\)", KMER_K)
    check(page, r"truncation to the model's (\d+) nt", TokenizerConfig().max_length)
    check(page, r"\(opset (\d+);", OPSET)
    check(page, rf"`format` \(`{ONNX_FORMAT}`\), `format_version` \((\d+)\)", ONNX_FORMAT_VERSION)


UNPUBLISHED = re.compile(r"pip install ['\"]?barcodetool\b(?!\S* @ git\+)")   # a git URL is fine


def test_install_instructions_name_no_unpublished_package():
    """barcodetool is not on PyPI: the pages install it from a clone or a git URL, never `pip install barcodetool`
    (or its extras) from the registry."""
    pages = ["README.md", "docs/quickstart.md", "docs/python-api.md", "docs/faq.md", "docs/file-formats.md",
             "docs/classify-and-cluster.md", "docs/pipelines.md"]
    for name in pages:
        text = prose(name).replace("so `pip install barcodetool` does not install it", "")
        found = UNPUBLISHED.search(text)
        assert found is None, f"{name}: ...{text[max(0, found.start() - 60):found.end() + 60]}..."
    assert stated("docs/quickstart.md", r"pip install -e '\.\[plot\]'") and stated(
        "docs/quickstart.md", r"pip install 'barcodetool\[plot\] @ git\+")


def test_plot_help_names_no_unpublished_package():
    from barcodetool.plot import INSTALL_HINT

    for name, text in (("docs/cli.md", prose("docs/cli.md")), ("barcodetool.plot.INSTALL_HINT", INSTALL_HINT)):
        found = UNPUBLISHED.search(text)
        assert found is None, f"{name}: ...{text[max(0, found.start() - 60):found.end() + 60]}..."
