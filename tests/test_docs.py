"""The documentation stays true: docs/cli.md matches the commands, the examples of docs/python-api.md,
docs/quickstart.md and docs/scaling.md run, links between the pages resolve, and shell completion works."""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import barcodetool.model.weights
from barcodetool.cli import main
from helpers_models import DATA, make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# the pages written with this test; links in them must resolve
PAGES = ("cli.md", "quickstart.md", "file-formats.md", "python-api.md", "scaling.md", "faq.md", "pipelines.md")


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of a Markdown file whose info string is `language`, in order."""
    text = path.read_text(encoding="utf-8")
    return [m.group(1) for m in re.finditer(rf"^```{re.escape(language)}[ \t]*\n(.*?)^```[ \t]*$", text,
                                            flags=re.M | re.S)]


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """CLI commands set PyTorch's threads (--threads 0 = all cores); keep the suite's setting for later tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-docs", seed=0)


@pytest.fixture()
def docs_env(tiny_folder, tmp_path, monkeypatch):
    """A working folder holding tests/data (as a clone has it), with the tiny model as the default model and a
    private cache folder, so that the documented commands run unchanged."""
    work = tmp_path / "work"
    (work / "tests").mkdir(parents=True)
    (work / "tests" / "data").symlink_to(DATA, target_is_directory=True)
    monkeypatch.chdir(work)
    monkeypatch.setattr(barcodetool.model.weights, "default_model_name",
                        lambda device="cpu", task="classify": str(tiny_folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return work


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def missing_modules(block: str) -> list[str]:
    """The optional modules a documented Python block needs that are not installed (pandas, anndata; matplotlib
    for barcodetool.plot): such a block is shown to users but skipped here."""
    names = set(re.findall(r"^(?:import|from) +([A-Za-z_]\w*)", block, flags=re.M))
    if "barcodetool.plot" in block:
        names.add("matplotlib")
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


# ============================================================================================ cli.md
def load_generator():
    spec = importlib.util.spec_from_file_location("generate_cli_reference", DOCS / "generate_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date():
    generator = load_generator()
    expected = generator.render()
    current = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert current == expected, "docs/cli.md is out of date: run `.venv/bin/python docs/generate_cli_reference.py`"


def test_cli_reference_covers_every_command():
    generator = load_generator()
    text = generator.render()
    import click

    ctx = click.Context(main, info_name="barcodetool", **main.context_settings)
    for command, command_ctx in generator.walk(main, ctx):
        assert f"## `{command_ctx.command_path}`" in text
        for param in command.get_params(command_ctx):
            if isinstance(param, click.Option) and not param.hidden:
                assert param.opts[0] in text, f"{command_ctx.command_path} {param.opts[0]}"
    assert "## `barcodetool plot embeddings`" in text and "_BARCODETOOL_COMPLETE=bash_source" in text
    assert generator.main(["--check"]) == 0


# ============================================================================================ python-api.md
def test_python_api_examples_run(docs_env, capsys):
    blocks = code_blocks(DOCS / "python-api.md", "python")
    assert len(blocks) >= 7
    namespace: dict = {"__name__": "__docs__"}
    skipped = []
    for number, block in enumerate(blocks, start=1):
        if missing_modules(block):
            skipped.append(missing_modules(block))
            continue
        exec(compile(block, f"docs/python-api.md block {number}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "ACGTTGCAACGT" in out                                  # clean_sequence example
    assert "unseen species left unnamed" in out
    assert (docs_env / "insects.ref.h5").is_file() and (docs_env / "sample.h5").is_file()
    if has_matplotlib():
        assert (docs_env / "sample.order.png").read_bytes()[:4] == b"\x89PNG"
    assert namespace["vectors"].shape[0] == 3
    # "Embeddings in numpy, pandas and AnnData": the h5py block reads what read_embeddings reads
    data = namespace["data"]
    assert list(namespace["ids"]) == data.ids and np.array_equal(namespace["matrix"], data.embeddings)
    assert {rank: list(v) for rank, v in namespace["taxonomy"].items()} == data.taxonomy
    assert list(namespace["bins"]) == data.bins and namespace["model_name"] == data.attrs["model_name"]
    if "frame" in namespace:                                      # pandas is installed
        frame = namespace["frame"]
        assert list(frame.index) == data.ids and frame.shape == (len(data.ids), len(data.taxonomy) + 1
                                                                 + data.embeddings.shape[1])
        assert list(frame["genus"]) == data.taxonomy["genus"]
    if "adata" in namespace:                                      # anndata is installed
        assert namespace["adata"].shape == data.embeddings.shape and (docs_env / "sample.h5ad").is_file()
    assert all(set(missing) <= {"matplotlib", "pandas", "anndata"} for missing in skipped), skipped


def test_barcodetool_embed_stays_callable_after_the_embed_module_is_imported(tiny_folder):
    """`barcodetool.embed` is the documented function; importing the submodule barcodetool.embedding must not
    replace it with the module (which happens when the package attribute and the submodule share a name)."""
    import importlib

    import barcodetool

    importlib.import_module("barcodetool.embedding")
    assert callable(barcodetool.embed), ("barcodetool.embed is not the function: "
                                         "the submodule import overwrote the package attribute")
    model = barcodetool.load_model(tiny_folder)
    first = barcodetool.embed(["ACGTACGTACGTACGTAC"], model=model)
    second = barcodetool.embed(["ACGTACGTACGTACGTAC"], model=model)
    assert np.allclose(first, second)


# ============================================================================================ quickstart.md
def quickstart_commands() -> list[str]:
    commands = []
    for block in code_blocks(DOCS / "quickstart.md", "console"):
        pending = ""
        for line in block.splitlines():
            if pending:
                pending += " " + line.strip()
            elif line.startswith("$ "):
                pending = line[2:].strip()
            else:
                continue
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            commands.append(pending)
            pending = ""
    return commands


def test_quickstart_commands_run(docs_env):
    commands = quickstart_commands()
    assert any(c.startswith("barcodetool classify") for c in commands)
    runner = CliRunner()
    ran = 0
    for command in commands:
        words = shlex.split(command, comments=True)
        if words[0] == "pip":
            continue
        if words[0] == "barcodetool":
            assert not set(words) & {"|", ">", "<", "&&", ";"}, f"keep barcodetool commands simple: {command}"
            if words[1:3] == ["plot", "embeddings"] and not has_matplotlib():
                continue
            result = runner.invoke(main, words[1:])
            assert result.exit_code == 0, f"{command}\n{result.output}\n{result.exception!r}"
        else:
            done = subprocess.run(["bash", "-c", command], cwd=docs_env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{command}\n{done.stderr}"
        ran += 1
    assert ran >= 8
    classified = (docs_env / "queries.classified.tsv").read_text(encoding="utf-8").splitlines()
    assert len(classified) == 84 and classified[0].startswith("id\tphylum\tphylum_confidence")
    clusters = (docs_env / "queries.clusters.tsv").read_text(encoding="utf-8").splitlines()
    assert clusters[0] == "id\tcluster\treference_bin\tsimilarity" and len(clusters) == 84
    assert (docs_env / "queries.clusters.json").is_file() and (docs_env / "queries.h5").is_file()
    # the example rows in the walk-through are records of the query file
    for record_id in ("LGSMG237-07", "CNSLP545-13"):
        assert any(line.startswith(record_id + "\t") for line in classified)


# ============================================================================================ scaling.md
def test_scaling_merge_script(docs_env, tiny_folder, monkeypatch, capsys):
    from barcodetool.embedding import embed_records_to_h5, read_embeddings
    from barcodetool.io.readers import BarcodeRecord, read_barcodes
    from barcodetool.model.weights import load_model

    scripts = [b for b in code_blocks(DOCS / "scaling.md", "python") if "def merge(" in b]
    assert len(scripts) == 1
    script = docs_env / "merge_embeddings.py"
    script.write_text(scripts[0], encoding="utf-8")
    model = load_model(tiny_folder)
    records = list(read_barcodes(DATA / "bioscan_sample.csv", skip_empty=True, min_length=6))[:60]
    plain = [BarcodeRecord(id=r.id, sequence=r.sequence, taxonomy={}) for r in records[40:]]
    embed_records_to_h5(records[:40], "part_00.h5", model, source="a.csv")
    embed_records_to_h5(plain, "part_01.h5", model, source="b.fasta")
    monkeypatch.setattr(sys, "argv", ["merge_embeddings.py", "merged.h5", "part_00.h5", "part_01.h5"])
    runpy.run_path(str(script), run_name="__main__")
    assert "wrote merged.h5" in capsys.readouterr().out
    merged, a, b = (read_embeddings(p) for p in ("merged.h5", "part_00.h5", "part_01.h5"))
    assert merged.ids == a.ids + b.ids
    assert np.array_equal(merged.embeddings, np.vstack([a.embeddings, b.embeddings]))
    assert merged.taxonomy["genus"] == a.taxonomy["genus"] + [""] * 20
    assert merged.bins == a.bins + [""] * 20
    assert int(merged.attrs["count"]) == 60 and merged.attrs["model_sha256"] == a.attrs["model_sha256"]
    other = make_tiny_model(docs_env / "other-model", seed=1)
    embed_records_to_h5(records[:5], "part_02.h5", load_model(other), source="c.csv")
    monkeypatch.setattr(sys, "argv", ["merge_embeddings.py", "bad.h5", "part_00.h5", "part_02.h5"])
    with pytest.raises(SystemExit, match="cannot be merged"):
        runpy.run_path(str(script), run_name="__main__")
    assert not Path("bad.h5").exists()


# ============================================================================================ links
def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_links_between_pages_resolve():
    anchors = {}
    for page in DOCS.glob("*.md"):
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
        anchors[page.name] = {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}
    problems = []
    for name in PAGES:
        text = (DOCS / name).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (DOCS / path) if path else (DOCS / name)
            if not file.exists():
                problems.append(f"{name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors.get(file.name, set()):
                problems.append(f"{name}: {target} (no such heading)")
    assert not problems, "\n".join(problems)


# ============================================================================================ completion
def console_script() -> list[str]:
    script = Path(sys.executable).with_name("barcodetool")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from barcodetool.cli import main; main(prog_name='barcodetool')"]


def test_shell_completion_scripts():
    env = dict(os.environ, _BARCODETOOL_COMPLETE="bash_source")
    done = subprocess.run(console_script(), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "_barcodetool_completion()" in done.stdout
    assert "complete -o nosort -F _barcodetool_completion barcodetool" in done.stdout


def test_shell_completion_in_process():
    from click.shell_completion import get_completion_class

    # what bash asks for on TAB, answered the way the installed command answers it
    result = CliRunner().invoke(main, [], prog_name="barcodetool", env={
        "_BARCODETOOL_COMPLETE": "bash_complete", "COMP_WORDS": "barcodetool pl", "COMP_CWORD": "1"})
    assert result.exit_code == 0 and "plain,plot" in result.output.splitlines()

    for shell, marker in (("zsh", "#compdef barcodetool"), ("fish", "complete --no-files --command barcodetool")):
        source = get_completion_class(shell)(main, {}, "barcodetool", "_BARCODETOOL_COMPLETE").source()
        assert marker in source
    bash = get_completion_class("bash")(main, {}, "barcodetool", "_BARCODETOOL_COMPLETE")
    values = [c.value for c in bash.get_completions(["plot", "embeddings", "x.h5", "--color-by"], "")]
    assert {"order", "genus", "bin", "cluster"} <= set(values)
    values = [c.value for c in bash.get_completions(["classify", "q.fasta", "--output-format"], "")]
    assert values == ["tsv", "sintax"]
    values = [c.value for c in bash.get_completions(["reference"], "")]
    assert "build" in values
