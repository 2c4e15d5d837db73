"""docs/examples/Snakefile and docs/examples/main.nf: the shell commands their rules and processes run work on
the test data (with a tiny model), and docs/pipelines.md quotes them exactly. Snakemake and Nextflow are not
needed; when `snakemake` is installed, the Snakefile is also run by it."""

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


# ============================================================================================ the page
def test_pipelines_page_quotes_the_examples():
    page = (ROOT / "docs" / "pipelines.md").read_text(encoding="utf-8")
    blocks = {lang: re.findall(rf"^```{lang}\n(.*?)^```", page, flags=re.M | re.S)
              for lang in ("snakemake", "nextflow")}
    assert blocks["snakemake"] and blocks["nextflow"]
    for block in blocks["snakemake"]:
        assert block in SNAKEFILE.read_text(encoding="utf-8"), "docs/pipelines.md quotes a rule not in the Snakefile"
    for block in blocks["nextflow"]:
        assert block in NEXTFLOW.read_text(encoding="utf-8"), "docs/pipelines.md quotes a process not in main.nf"
