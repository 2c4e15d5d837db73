"""The command line: --version, train -> embed end to end, `models`, and the exit-status contract
(0 ok, 1 input/model/output problem with one line on stderr, 2 usage)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from barcodetool.model import weights
from barcodetool._version import __version__
from barcodetool.cli import main
from barcodetool.embedding import read_embeddings
from barcodetool.io.readers import read_barcodes
from barcodetool.model.weights import read_card

DATA = Path(__file__).resolve().parent / "data"
BIOSCAN = DATA / "bioscan_sample.csv"
EXAMPLE_FASTA = DATA / "example.fasta"
BAD = DATA / "bad"
CPU = ["--device", "cpu", "--threads", "1"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def registry(tmp_path, monkeypatch, tiny_model_dir):
    """A user models folder holding one model, `my-tiny`, and no bundled models."""
    user, bundled = tmp_path / "user-models", tmp_path / "bundled"
    bundled.mkdir()
    shutil.copytree(tiny_model_dir, user / "my-tiny")
    monkeypatch.setattr(weights, "user_models_dir", lambda: user)
    monkeypatch.setattr(weights, "bundled_root", lambda: bundled)
    return user


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("barcodetool: error")]


# ============================================================================================ version
def test_version_first_line_is_bare_version(runner):
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == __version__
    assert "BarcodeMAE" in result.stdout  # the citation follows


def test_version_subprocess(subprocess_env):
    done = subprocess.run([sys.executable, "-m", "barcodetool", "--version"], capture_output=True, text=True,
                          env=subprocess_env, timeout=60)
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == __version__


def test_package_and_cli_start_without_pytorch(subprocess_env):
    """PyTorch (1.5-2 s to import) is imported when a model is loaded, not by `import barcodetool`, the CLI or
    naming and listing models (`barcodetool models`)."""
    code = ("import sys, barcodetool, barcodetool.cli, barcodetool.classify, barcodetool.embedding; "
            "from barcodetool.model.weights import available_models, read_card, resolve_model; "
            "[read_card(path) for path in available_models().values()]; resolve_model('auto'); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(barcodetool.embed) and barcodetool.PretrainedModel.__name__ == 'PretrainedModel'; "
            "barcodetool.load_model(); assert 'torch' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env,
                          timeout=60)
    assert done.returncode == 0, done.stderr


# ============================================================================================ end to end
def test_train_then_embed(runner, tmp_path):
    model_dir = tmp_path / "cli-model"
    result = runner.invoke(main, ["-q", "train", str(BIOSCAN), "--preset", "tiny", "--max-steps", "3",
                                  "--batch-size", "8", "-o", str(model_dir), *CPU])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(model_dir)
    card = read_card(model_dir)
    assert card["training"]["steps"] == 3 and card["name"] == "cli-model"

    output = tmp_path / "example.h5"
    result = runner.invoke(main, ["-q", "embed", str(EXAMPLE_FASTA), "-o", str(output), "--model", str(model_dir),
                                  *CPU])
    assert result.exit_code == 0, result.output
    embeddings = read_embeddings(output)
    assert embeddings.ids == [r.id for r in read_barcodes(EXAMPLE_FASTA)]
    assert embeddings.embeddings.shape == (100, 32)
    assert embeddings.attrs["model_sha256"] == card["tensors_sha256"]

    output16 = tmp_path / "bioscan16.h5"
    result = runner.invoke(main, ["-q", "embed", str(BIOSCAN), "-o", str(output16), "-m", str(model_dir),
                                  "--dtype", "float16", "--batch-size", "32", *CPU])
    assert result.exit_code == 0, result.output
    with h5py.File(output16, "r") as handle:
        assert handle["embeddings"].dtype.itemsize == 2 and handle["embeddings"].shape == (249, 32)
        assert "taxonomy/species" in handle and "bin" in handle


def test_models_lists_a_model(runner, registry):
    from barcodetool.model.mae import BarcodeMAE, preset
    from barcodetool.model.tokenizer import TokenizerConfig
    from barcodetool.model.weights import save_model

    save_model(BarcodeMAE(preset("tiny", embedding_width=48), include_decoder=False), TokenizerConfig(),
               registry / "my-mapped")
    result = runner.invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    rows = {line.split("\t")[0]: line.split("\t")[1:3] for line in result.stdout.splitlines()}
    assert rows["my-tiny"] == ["2x32", str(registry / "my-tiny")]
    assert rows["my-mapped"] == ["2x32->48", str(registry / "my-mapped")]   # its embedding width after the arrow



def test_models_list_bundled_first_and_survive_a_damaged_user_model(runner, registry):
    """A folder whose card this version cannot read is listed as unreadable, and the rest still are (one bad
    folder made the whole listing fail); bundled models come first, as the help says."""
    shutil.copytree(registry / "my-tiny", registry.parent / "bundled" / "barcodemae-nano")
    (registry / "newer").mkdir()
    (registry / "newer" / "barcodetool.json").write_text('{"format": "barcodetool-model", "format_version": 99}')
    result = runner.invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert "barcodemae-nano" in names and "my-tiny" in names
    assert names.index("barcodemae-nano") < names.index("my-tiny")
    line = next(line for line in result.stdout.splitlines() if line.startswith("newer\t"))
    assert "unreadable" in line and "newer than this barcodetool reads" in line

def test_models_say_what_auto_picks_them_for():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    roles = {line.split("\t")[0]: line.split("\t")[-1] for line in result.stdout.splitlines()}
    assert roles["barcodemae-nano"] == "(the default on a CPU)"
    assert roles["barcodemae-nano-identity"] == "(the default of embed on a CPU)"
    assert roles["barcodemae-base"] == "(the default on a GPU)"
    assert not roles["barcodemae-mini"].startswith("(")


def test_embed_by_registry_name(runner, registry, tmp_path):
    output = tmp_path / "out.h5"
    result = runner.invoke(main, ["-q", "embed", str(EXAMPLE_FASTA), "-o", str(output), "-m", "my-tiny", *CPU])
    assert result.exit_code == 0, result.output
    assert read_embeddings(output).attrs["model_name"] == "my-tiny"


# ============================================================================================ errors
def test_bad_input_one_line_naming_the_file(tiny_model_dir, tmp_path, subprocess_env):
    bad = BAD / "protein.fasta"
    output = tmp_path / "out.h5"
    done = subprocess.run([sys.executable, "-m", "barcodetool", "-q", "embed", str(bad), "-o", str(output),
                           "-m", str(tiny_model_dir), *CPU], capture_output=True, text=True, env=subprocess_env,
                          timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("barcodetool: error: ") and str(bad) in lines[0]
    assert "Traceback" not in done.stderr
    assert not output.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["binary_garbage.fasta", "empty.fasta", "short.fasta"])
def test_bad_inputs_exit_1(runner, tiny_model_dir, tmp_path, name):
    bad = BAD / name
    result = runner.invoke(main, ["embed", str(bad), "-o", str(tmp_path / "out.h5"), "-m", str(tiny_model_dir),
                                  *CPU])
    assert result.exit_code == 1, result.output
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and str(bad) in lines[0]
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_lists_names(runner, registry, tmp_path):
    result = runner.invoke(main, ["embed", str(EXAMPLE_FASTA), "-o", str(tmp_path / "out.h5"),
                                  "-m", "no-such-model", *CPU])
    assert result.exit_code == 1
    (line,) = error_lines(result.stderr)
    assert "no-such-model" in line and "my-tiny" in line


@pytest.mark.parametrize("arguments", [
    ["embed", "IN", "-o", "OUT", "--batch-size", "0"],
    ["embed", "IN", "-o", "OUT", "--dtype", "float64"],
    ["embed", "IN", "-o", "OUT", "--device", "tpu"],
    ["embed", "IN"],
    ["train", "IN", "--preset", "huge"],
    ["train", "IN", "--mask-ratio", "1.0"],
    ["embed", "IN", "-o", "OUT", "--no-such-option"],
])
def test_bad_option_values_exit_2(runner, tiny_model_dir, tmp_path, arguments):
    replace = {"IN": str(EXAMPLE_FASTA), "OUT": str(tmp_path / "out.h5")}
    arguments = [replace.get(a, a) for a in arguments]
    if arguments[0] == "embed":
        arguments += ["-m", str(tiny_model_dir)]
    result = runner.invoke(main, arguments)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_output_equal_to_input_exit_1(runner, tiny_model_dir, tmp_path):
    source = tmp_path / "input.fasta"
    shutil.copy(EXAMPLE_FASTA, source)
    result = runner.invoke(main, ["embed", str(source), "-o", str(source), "-m", str(tiny_model_dir), *CPU])
    assert result.exit_code == 1
    (line,) = error_lines(result.stderr)
    assert str(source) in line
    assert source.read_bytes() == EXAMPLE_FASTA.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.fasta"]


def test_commands_run_with_fewer_young_collections(monkeypatch):
    import gc

    from barcodetool.cli import GC_YOUNG_OBJECTS

    monkeypatch.setattr(gc, "set_threshold", lambda *values: calls.append(values))
    monkeypatch.setattr(gc, "get_threshold", lambda: (700, 10, 10))
    calls: list = []
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0 and calls == [(GC_YOUNG_OBJECTS, 10, 10)]
