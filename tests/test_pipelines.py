"""docs/examples/Snakefile, main.nf, scatter.smk and scatter.nf: the shell commands their rules and processes run
work on the test data (with a tiny model), the scattered workflows give what one `classify` of the whole file
gives, and docs/pipelines.md quotes them exactly. Snakemake and Nextflow are not needed; when `snakemake` is
installed, the Snakefiles are also run by it."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from barcodetool.cli import main
from helpers_models import DATA, make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
SNAKEFILE = EXAMPLES / "Snakefile"
NEXTFLOW = EXAMPLES / "main.nf"
SCATTER_SNAKEFILE = EXAMPLES / "scatter.smk"
SCATTER_NEXTFLOW = EXAMPLES / "scatter.nf"
QUERIES = DATA / "example.fasta"
REFERENCE = DATA / "bold_bcdm_sample.tsv"


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """CLI commands set PyTorch's threads (--threads 0 = all cores); keep the suite's setting for later tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-pipelines", seed=0)


@pytest.fixture(scope="module")
def shared_index(tiny_folder, tmp_path_factory):
    """The index the scattered workflows share, built once for the module (as `reference build` would be)."""
    import torch

    folder = tmp_path_factory.mktemp("shared-index")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        run_command(f"barcodetool reference build {REFERENCE} --output {folder / 'reference.h5'} "
                    f"--model {tiny_folder} --device cpu --threads 1", folder)
    torch.set_num_threads(threads)
    return folder / "reference.h5"


# ============================================================================================ parsing
def snakemake_rules(text: str) -> dict[str, dict]:
    """rule name -> {"shell": the command template, "input": {...}, "output": ...} for simple rules."""
    rules = {}
    for match in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", text, flags=re.M):
        name, body = match.group(1), match.group(2)
        sections = {}
        for section in re.finditer(r"^    (\w+):[ \t]*(.*)\n((?:        .*\n)*)", body, flags=re.M):
            sections[section.group(1)] = (section.group(2) + "\n" + section.group(3)).strip()
        rules[name] = sections
    return rules


def shell_template(section: str) -> str:
    """A `shell:` section: Python string literals, implicitly concatenated."""
    return ast.literal_eval("(" + section + ")")


class Names:
    """Snakemake's namedlist: `{input}` joins every item, `{input.queries}` names one."""

    def __init__(self, *items, **named):
        self._items = [str(i) for i in items] + [str(v) for v in named.values()]
        for key, value in named.items():
            setattr(self, key, value)

    def __str__(self):
        return " ".join(self._items)

    def __format__(self, spec):
        return format(str(self), spec)


def expand_snakemake(template: str, **values) -> str:
    return string.Formatter().vformat(template, (), values)


def nextflow_scripts(text: str) -> dict[str, str]:
    """process name -> its script (the triple-quoted command)."""
    return {m.group(1): m.group(2).strip() for m in
            re.finditer(r"^process (\w+) \{.*?script:\s*\"\"\"(.*?)\"\"\"", text, flags=re.M | re.S)}


def expand_nextflow(script: str, values: dict[str, str]) -> str:
    def replace(match):
        key = match.group(1)
        assert key in values, f"no test value for ${{{key}}}"
        return str(values[key])

    return re.sub(r"\$\{([^}]+)\}", replace, script)


def bash(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a shell command as Snakemake does (bash, strict mode)."""
    done = subprocess.run(["bash", "-c", "set -euo pipefail; " + command], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    return done


def run_command(command: str, cwd: Path) -> None:
    """Run one barcodetool shell command in-process (standard error redirections become no-ops)."""
    words = shlex.split(command)
    assert words[0] == "barcodetool", command
    args, log = [], None
    iterator = iter(words[1:])
    for word in iterator:
        if word in ("2>", ">"):
            log = next(iterator)
        elif word.startswith("2>"):
            log = word[2:]
        else:
            assert not set(word) & set("|;&<>"), f"unexpected shell syntax in {command}"
            args.append(word)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, f"{command}\n{result.output}\n{result.exception!r}"
    if log:
        (cwd / log).parent.mkdir(parents=True, exist_ok=True)
        (cwd / log).write_text(result.output, encoding="utf-8")


# ============================================================================================ Snakemake
def test_snakemake_rules_run(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rules = snakemake_rules(SNAKEFILE.read_text(encoding="utf-8"))
    assert {"all", "reference", "classify", "cluster"} <= set(rules)
    for folder in ("results", "logs"):
        (tmp_path / folder).mkdir()
    sample = "example"
    common = {"params": Names(model=str(tiny_folder), device="cpu"), "threads": 1,
              "wildcards": Names(sample=sample)}
    reference = expand_snakemake(shell_template(rules["reference"]["shell"]), input=Names(str(REFERENCE)),
                                 output=Names("results/reference.h5"), log=Names("logs/reference.log"), **common)
    run_command(reference, tmp_path)
    for name in ("classify", "cluster"):
        command = expand_snakemake(
            shell_template(rules[name]["shell"]),
            input=Names(queries=str(QUERIES), reference="results/reference.h5"),
            output=Names(f"results/{sample}.{'classified' if name == 'classify' else 'clusters'}.tsv"),
            log=Names(f"logs/{sample}.{name}.log"), **common)
        run_command(command, tmp_path)
    classified = (tmp_path / "results" / "example.classified.tsv").read_text(encoding="utf-8").splitlines()
    assert classified[0].startswith("id\tphylum") and len(classified) == 101
    clusters = (tmp_path / "results" / "example.clusters.tsv").read_text(encoding="utf-8").splitlines()
    assert clusters[0] == "id\tcluster\treference_bin\tsimilarity" and len(clusters) == 101
    assert all((tmp_path / "logs" / f"{name}.log").is_file() for name in ("reference", "example.classify"))


@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
def test_snakefile_with_snakemake(tiny_folder, tmp_path):
    (tmp_path / "queries").mkdir()
    shutil.copy(QUERIES, tmp_path / "queries" / "example.fasta")
    shutil.copy(REFERENCE, tmp_path / "reference.tsv")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run(["snakemake", "-s", str(SNAKEFILE), "--cores", "1", "--directory", str(tmp_path),
                           "--config", f"model={tiny_folder}", "device=cpu"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results" / "example.classified.tsv").is_file()
    assert (tmp_path / "results" / "example.clusters.tsv").is_file()


# ------------------------------------------------------------------------------ scatter.smk
def fasta_records(path: Path) -> list[str]:
    """The records of a FASTA file, each as its text (header and sequence lines)."""
    return [record for record in re.split(r"^(?=>)", path.read_text(encoding="utf-8"), flags=re.M) if record]


def write_first_records(source: Path, target: Path, count: int) -> Path:
    target.write_text("".join(fasta_records(source)[:count]), encoding="utf-8")
    return target


def classify_whole(queries: Path, index: Path, tiny_folder: Path, cwd: Path) -> list[str]:
    """One `barcodetool classify` of the whole file: what a scattered run must reproduce, row for row."""
    output = cwd / f"{queries.stem}.whole.tsv"
    run_command(f"barcodetool classify {queries} --reference {index} --output {output} --model {tiny_folder} "
                "--device cpu --threads 1", cwd)
    return output.read_text(encoding="utf-8").splitlines()


def split_with_scatter_rule(queries: Path, parts: int, cwd: Path) -> list[Path]:
    """scatter.smk's split rule, as Snakemake would run it with `parts` scatter items."""
    rules = snakemake_rules(SCATTER_SNAKEFILE.read_text(encoding="utf-8"))
    outputs = [f"parts/{i}-of-{parts}.fasta" for i in range(1, parts + 1)]
    (cwd / "parts").mkdir(exist_ok=True)
    bash(expand_snakemake(shell_template(rules["split"]["shell"]), input=Names(str(queries)),
                          output=Names(*outputs)), cwd)
    return [cwd / output for output in outputs]


def test_scatter_smk_declares_a_scatter_gather():
    text = SCATTER_SNAKEFILE.read_text(encoding="utf-8")
    rules = snakemake_rules(text)
    assert {"all", "split", "classify", "gather"} <= set(rules)
    assert re.search(r"^scattergather:\n    split=PARTS,", text, flags=re.M)
    assert 'temp(scatter.split("parts/{scatteritem}.fasta"))' in rules["split"]["output"]
    assert rules["classify"]["input"].startswith('queries="parts/{scatteritem}.fasta"')
    assert 'temp("results/parts/{scatteritem}.classified.tsv")' in rules["classify"]["output"]
    assert "mem_mb=MEM_MB" in rules["classify"]["resources"]
    assert 'gather.split("results/parts/{scatteritem}.classified.tsv")' in rules["gather"]["input"]
    assert shell_template(rules["gather"]["shell"]) == "awk 'FNR > 1 || NR == 1' {input} > {output}"


@pytest.mark.parametrize(("records", "parts", "sizes"), [
    (100, 3, [34, 33, 33]), (10, 4, [3, 2, 3, 2]), (7, 7, [1] * 7), (2, 5, [1, 0, 1, 0, 0]), (0, 2, [0, 0]),
])
def test_scatter_smk_split_keeps_records_in_order(tmp_path, records, parts, sizes):
    queries = write_first_records(QUERIES, tmp_path / "queries.fasta", records)
    files = split_with_scatter_rule(queries, parts, tmp_path)
    assert all(file.is_file() for file in files), "every part file must exist, even empty"
    assert [len(fasta_records(file)) for file in files] == sizes
    assert "".join(file.read_text(encoding="utf-8") for file in files) == queries.read_text(encoding="utf-8")


@pytest.mark.parametrize(("records", "parts"), [(100, 3), (2, 3)])
def test_scatter_smk_gathers_what_one_classify_gives(tiny_folder, shared_index, tmp_path, monkeypatch, records,
                                                     parts):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    queries = QUERIES if records == 100 else write_first_records(QUERIES, tmp_path / "few.fasta", records)
    rules = snakemake_rules(SCATTER_SNAKEFILE.read_text(encoding="utf-8"))
    split = split_with_scatter_rule(queries, parts, tmp_path)
    for folder in ("results/parts", "logs/classify"):
        (tmp_path / folder).mkdir(parents=True)
    tables = []
    for item, part in zip((f"{i}-of-{parts}" for i in range(1, parts + 1)), split):
        tables.append(f"results/parts/{item}.classified.tsv")
        command = expand_snakemake(
            shell_template(rules["classify"]["shell"]),
            input=Names(queries=str(part.relative_to(tmp_path)), reference=str(shared_index)),
            output=Names(tables[-1]), log=Names(f"logs/classify/{item}.log"), threads=1,
            params=Names(model=str(tiny_folder), device="cpu"), wildcards=Names(scatteritem=item))
        # barcodetool runs in-process; the shell around it (the test for an empty part, its else) runs in bash
        guard = re.fullmatch(r"if \[ -s (\S+) \]; then (barcodetool .+?); else (.+); fi", command)
        assert guard, command
        if subprocess.run(["bash", "-c", f"[ -s {guard[1]} ]"], cwd=tmp_path).returncode == 0:
            run_command(guard[2], tmp_path)
        else:
            bash(guard[3], tmp_path)
        assert (tmp_path / tables[-1]).is_file() and (tmp_path / f"logs/classify/{item}.log").is_file()
    empty = [table for table in tables if (tmp_path / table).stat().st_size == 0]
    assert len(empty) == (1 if records == 2 else 0)
    bash(expand_snakemake(shell_template(rules["gather"]["shell"]), input=Names(*tables),
                          output=Names("results/classified.tsv")), tmp_path)
    gathered = (tmp_path / "results" / "classified.tsv").read_text(encoding="utf-8").splitlines()
    whole = classify_whole(queries, shared_index, tiny_folder, tmp_path)
    assert len(whole) == records + 1 and whole[0].startswith("id\tphylum")
    assert gathered == whole


@pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")
def test_scatter_smk_with_snakemake(tiny_folder, shared_index, tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run(["snakemake", "-s", str(SCATTER_SNAKEFILE), "--cores", "1", "--directory", str(tmp_path),
                           "--config", f"queries={QUERIES}", f"reference={shared_index}", "parts=3",
                           f"model={tiny_folder}", "device=cpu"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    gathered = (tmp_path / "results" / "classified.tsv").read_text(encoding="utf-8").splitlines()
    assert gathered == classify_whole(QUERIES, shared_index, tiny_folder, tmp_path)
    assert not (tmp_path / "parts").exists() or not any((tmp_path / "parts").iterdir()), "temp parts are removed"


# ============================================================================================ Nextflow
def test_nextflow_processes_run(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    text = NEXTFLOW.read_text(encoding="utf-8")
    scripts = nextflow_scripts(text)
    assert set(scripts) == {"BUILD_REFERENCE", "CLASSIFY"}
    assert re.search(r"path 'reference\.h5'", text) and 'path "${queries.baseName}.classified.tsv"' in text
    values = {"reference_table": str(REFERENCE), "queries": str(QUERIES), "queries.baseName": QUERIES.stem,
              "reference": "reference.h5", "params.model": str(tiny_folder), "params.device": "cpu",
              "task.cpus": "1"}
    for name in ("BUILD_REFERENCE", "CLASSIFY"):
        lines = [line.strip() for line in expand_nextflow(scripts[name], values).splitlines() if line.strip()]
        assert len(lines) == 1, f"{name}: one command expected"
        run_command(lines[0], tmp_path)
    assert (tmp_path / "reference.h5").is_file()
    rows = (tmp_path / f"{QUERIES.stem}.classified.tsv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 101


def test_scatter_nf_classifies_parts_and_gathers_them_in_order(tiny_folder, shared_index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    text = SCATTER_NEXTFLOW.read_text(encoding="utf-8")
    scripts = nextflow_scripts(text)
    assert set(scripts) == {"CLASSIFY_PART"}
    assert ".splitFasta(by: params.per_part, file: true)" in text
    assert "file(params.reference, checkIfExists: true)" in text, "the index must be a value channel"
    assert "keepHeader: true, skip: 1" in text and 'path "${part.baseName}.tsv"' in text
    assert "sort: { table -> table.baseName.tokenize('.').last().toInteger() }" in text
    # splitFasta(by: 40, file: true) of the 100 queries: queries.1.fasta (40), queries.2.fasta (40), queries.3.fasta
    records = fasta_records(QUERIES)
    parts = []
    for number, start in enumerate(range(0, len(records), 40), start=1):
        parts.append(tmp_path / f"queries.{number}.fasta")
        parts[-1].write_text("".join(records[start:start + 40]), encoding="utf-8")
    for part in reversed(parts):  # the jobs end in any order
        values = {"part": part.name, "part.baseName": part.stem, "reference": str(shared_index),
                  "params.model": str(tiny_folder), "params.device": "cpu", "task.cpus": "1"}
        lines = [line.strip() for line in expand_nextflow(scripts["CLASSIFY_PART"], values).splitlines()
                 if line.strip()]
        assert len(lines) == 1, "CLASSIFY_PART: one command expected"
        run_command(lines[0], tmp_path)
    # collectFile(keepHeader: true, skip: 1, sort: the part's number), as Nextflow does it
    tables = sorted(tmp_path.glob("queries.*.tsv"), key=lambda table: int(table.stem.split(".")[-1]))
    assert [table.name for table in tables] == ["queries.1.tsv", "queries.2.tsv", "queries.3.tsv"]
    gathered = []
    for table in tables:
        lines = table.read_text(encoding="utf-8").splitlines()
        gathered += lines if not gathered else lines[1:]
    assert gathered == classify_whole(QUERIES, shared_index, tiny_folder, tmp_path)


# ============================================================================================ the page
def test_pipelines_page_quotes_the_examples():
    page = (ROOT / "docs" / "pipelines.md").read_text(encoding="utf-8")
    blocks = {lang: re.findall(rf"^```{lang}\n(.*?)^```", page, flags=re.M | re.S)
              for lang in ("snakemake", "nextflow")}
    assert blocks["snakemake"] and blocks["nextflow"]
    sources = {"snakemake": (SNAKEFILE, SCATTER_SNAKEFILE), "nextflow": (NEXTFLOW, SCATTER_NEXTFLOW)}
    for lang, files in sources.items():
        texts = [file.read_text(encoding="utf-8") for file in files]
        for block in blocks[lang]:
            assert any(block in text for text in texts), \
                f"docs/pipelines.md quotes a {lang} block that is in none of {', '.join(f.name for f in files)}"
