"""Untrusted files are checked before use (issue 16, item 5): a crafted or damaged reference index, model card,
ONNX graph or training checkpoint fails with one line naming the file, what is wrong and the fix, never with a
traceback, a huge allocation or silent nonsense.

Each crafted file is a small valid one with one thing changed. The library call must raise the typed error with a
one-line message; the command line (in-process through Click's runner, and a few cases as real processes) must
exit 1 with exactly one stderr line and no traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from barcodetool.cli import main
from barcodetool.errors import InputError
from barcodetool.reference import ReferenceIndex
from helpers_models import (SINTAX_REFERENCE, load_tiny, make_tiny_model, restore_torch_threads,  # noqa: F401
                            save_sintax_index)

CPU = ["--device", "cpu", "--threads", "1"]
REBUILD = "rebuild it with `barcodetool reference build`"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-untrusted", seed=0)


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, model_dir) -> Path:
    return save_sintax_index(model_dir, tmp_path_factory.mktemp("index"))


@pytest.fixture(scope="module")
def queries(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("queries") / "q.fasta"
    records = SINTAX_REFERENCE.read_text().split(">")[1:4]
    path.write_text("".join(">" + r.split(";", 1)[0].split("\n", 1)[0] + "\n" + r.split("\n", 1)[1]
                            for r in records))
    return path


pytestmark = pytest.mark.usefixtures("private_folders")   # conftest.py: a private cache and data folder


def invoke(arguments: list[str]):
    return CliRunner().invoke(main, arguments)


def assert_one_error_line(result, words=()) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("barcodetool: error: "), lines[0]
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def assert_one_line(error: Exception, words=()) -> str:
    text = str(error)
    assert "\n" not in text, text
    for word in words:
        assert word in text, (word, text)
    return text


# ============================================================================================ reference index
def replace(name: str, values, **options):
    def change(handle):
        del handle[name]
        handle.create_dataset(name, data=values, **options)
    return change


def replace_with(name: str, update):
    """Replace dataset `name` with update(its values)."""
    def change(handle):
        values = handle[name][()]
        del handle[name]
        handle.create_dataset(name, data=update(values))
    return change


def set_attr(key: str, value, where: str = "/"):
    def change(handle):
        handle[where].attrs[key] = value
    return change


def set_values(name: str, where, value):
    return replace_with(name, lambda values: _set(values, where, value))


def _set(values, where, value):
    values = values.copy()
    values[where] = value
    return values


def _swap_first_groups(values):
    values = values.copy()
    values[[0, 1]] = values[[1, 0]]
    return values


STRINGS = h5py.string_dtype("utf-8")
# name, change, words of the message, eager (False: found when the identity layer is first read)
INDEX_CASES = [
    ("format_version_text", set_attr("format_version", "abc"), ["format_version"], True),
    ("format_version_float", set_attr("format_version", 2.5), ["format_version", "not an integer"], True),
    ("label_code_too_large", set_values("labels/genus", 3, 99), ["/labels/genus holds 99, outside -1..5"], True),
    ("label_code_negative", set_values("labels/species", 0, -7), ["/labels/species holds -7"], True),
    ("labels_wrong_length", replace_with("labels/order", lambda v: v[:-1]), ["/labels/order has shape [99]"], True),
    ("label_names_not_text", replace("label_names/genus", np.arange(6)), ["/label_names/genus holds int64"], True),
    ("embeddings_integers", replace_with("embeddings", lambda v: (v * 100).astype(np.int32)),
     ["/embeddings holds int32 values, not float16 or float32"], True),
    ("embeddings_float64", replace_with("embeddings", lambda v: v.astype(np.float64)), ["float64"], True),
    ("embeddings_nan", set_values("embeddings", (5, 3), np.nan), ["/embeddings row 5 holds NaN"], True),
    ("embeddings_inf", set_values("embeddings", (7, 0), np.inf), ["row 7 holds NaN or infinity"], True),
    ("embeddings_not_unit", replace_with("embeddings", lambda v: v * 3), ["/embeddings row 0 has length 3"], True),
    ("embeddings_one_dimensional", replace_with("embeddings", lambda v: v[:, 0]), ["/embeddings has shape [100]"],
     True),
    ("embeddings_fewer_rows", replace_with("embeddings", lambda v: v[:50]), ["/embeddings has shape [50, 32]"], True),
    ("ids_not_text", replace("ids", np.arange(100)), ["/ids holds int64 values, not strings"], True),
    ("ids_not_utf8", replace("ids", np.array([b"\xff\xfe"] * 100, dtype=object),
                             dtype=h5py.string_dtype("utf-8")), ["/ids is not UTF-8"], True),
    ("group_out_of_range", set_values("sequence_group", 4, 1000), ["/sequence_group holds 1000"], True),
    ("groups_not_by_first_record", replace_with("sequence_group", _swap_first_groups),
     ["/sequence_group is not numbered 0, 1, 2"], True),
    ("groups_floats", replace_with("sequence_group", lambda v: v.astype(np.float32)), ["/sequence_group holds float32"],
     True),
    ("tokenizer_not_json", set_attr("tokenizer", "{k: 6"), ["attribute tokenizer is not JSON"], True),
    ("calibration_not_json", set_attr("calibration", "not json"), ["attribute calibration is not JSON"], True),
    ("calibration_deep_json", set_attr("calibration", "[" * 100000 + "]" * 100000),
     ["attribute calibration is not JSON"], True),
    ("calibration_json_list", set_attr("identity_calibration", "[1, 2]"), ["not a JSON dict"], True),
    ("candidates_not_json", set_attr("identity_calibration_candidates", "twenty"),
     ["identity_calibration_candidates is not JSON"], True),
    ("candidates_wrong", set_attr("identity_calibration_candidates", "[20, -1]"),
     ["not two numbers of candidates"], True),
    ("threshold_text", set_attr("threshold_species", "high"), ["attribute threshold_species is 'high', not a number"],
     True),
    ("precision_nan", set_attr("identity_calibration_precision", np.nan),
     ["attribute identity_calibration_precision is NaN"], True),
    ("calibration_k_float", set_attr("calibration_k", 2.5), ["calibration_k is 2.5, not an integer"], True),
    ("count_disagrees", set_attr("count", 7), ["attribute count is 7, but /ids holds 100"], True),
    ("neighbour_out_of_range", set_values("calibration/genus/neighbours", (0, 0), 100),
     ["/calibration/genus/neighbours holds 100, outside -1..99"], True),
    ("calibration_query_negative", set_values("calibration/species/queries", 2, -1),
     ["/calibration/species/queries holds -1"], True),
    ("similarities_wrong_shape", replace_with("calibration/sequence/similarities", lambda v: v[:, :3]),
     ["/calibration/sequence/similarities has shape [73, 3], expected [73, 50]"], True),
    ("similarities_nan", set_values("calibration/sequence/similarities", (1, 1), np.nan),
     ["/calibration/sequence/similarities holds NaN"], True),
    ("identity_candidate_out_of_range", set_values("identity/calibration/genus/kmer", (0, 0), 73),
     ["/identity/calibration/genus/kmer holds 73, outside -1..72"], True),
    ("identity_calibration_missing_score", lambda h: h["identity/calibration/species"].__delitem__("kmer_score"),
     ["incomplete", "kmer_score"], True),
    ("kmer_size_disagrees", set_attr("size", 50, "identity/kmer"), ["covers 50 sequences, the index 73"], True),
    ("kmer_k_text", set_attr("k", "twelve", "identity/kmer"), ["/identity/kmer attribute k is 'twelve'"], True),
    ("kmer_df_wrong_shape", replace_with("identity/kmer/df", lambda v: v[:-1]), ["/identity/kmer/df has shape"],
     True),
    ("kmer_refs_out_of_range", set_values("identity/kmer/refs", 0, 500), ["/identity/kmer/refs holds 500"], False),
    ("kmer_codes_out_of_range", set_values("identity/kmer/kmers", -1, 4 ** 12), ["/identity/kmer/kmers holds"],
     False),
    ("kmer_postings_inconsistent", set_values("identity/kmer/df", 0, 5), ["k-mer index is inconsistent"], False),
]


def crafted(index_path: Path, folder: Path, change) -> Path:
    path = folder / "bad.h5"
    shutil.copyfile(index_path, path)
    with h5py.File(path, "r+") as handle:
        change(handle)
    return path


def test_the_valid_index_loads(index_path):
    index = ReferenceIndex.load(index_path)
    assert len(index) == 100 and len(index.identity) == 73 and len(index.sequences) == 100


@pytest.mark.parametrize("case", INDEX_CASES, ids=[case[0] for case in INDEX_CASES])
def test_crafted_index_is_refused_with_one_line(case, index_path, model_dir, queries, tmp_path):
    name, change, words, eager = case
    bad = crafted(index_path, tmp_path, change)
    with pytest.raises(InputError) as caught:
        index = ReferenceIndex.load(bad)
        index.identity   # noqa: B018 (the stored k-mer index is read on first use)
    assert_one_line(caught.value, [str(bad), REBUILD, *words])
    if eager:
        assert_one_error_line(invoke(["-q", "reference", "info", str(bad)]), [str(bad), *words])
    result = invoke(["-q", "classify", str(queries), "-r", str(bad), "-o", str(tmp_path / "out.tsv"),
                     "-m", str(model_dir), *CPU])
    assert_one_error_line(result, [str(bad), *words])
    assert not (tmp_path / "out.tsv").exists()


def test_crafted_indexes_fail_cleanly_as_real_processes(index_path, model_dir, queries, tmp_path, subprocess_env):
    """One process each (interpreter and PyTorch start-up cost seconds): `reference info` on a text
    format_version, `classify` on NaN embeddings."""
    for (name, change, words, _), command in (
            (INDEX_CASES[0], ["reference", "info"]),
            (INDEX_CASES[8], ["classify", str(queries), "-o", str(tmp_path / "out.tsv"), "-m", str(model_dir), *CPU,
                              "-r"])):
        bad = crafted(index_path, tmp_path, change)
        run = subprocess.run([sys.executable, "-m", "barcodetool", "-q", *command, str(bad)], capture_output=True,
                             text=True, env=subprocess_env, timeout=120)
        assert run.returncode == 1, (name, run.stderr)
        lines = run.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
        assert all(word in lines[0] for word in [str(bad), *words]), lines[0]
    assert not (tmp_path / "out.tsv").exists()


# ============================================================================================ model cards
def edit_card(folder: Path, change) -> Path:
    path = folder / "barcodetool.json"
    card = json.loads(path.read_text())
    result = change(card)
    path.write_text(result if isinstance(result, str) else json.dumps(card))
    return path


def setting(key: str, value, part: str = "model_config"):
    def change(card):
        card[part][key] = value
    return change


def raw_card(text: str):
    return lambda card: text


DEEP = "[" * 100000 + "]" * 100000
# name, change, words of the message
CARD_CASES = [
    ("layers_fractional", setting("encoder_layers", 2.5), ["encoder_layers must be an integer, got 2.5"]),
    ("layers_negative", setting("encoder_layers", -1), ["encoder_layers must be between 1 and 256, got -1"]),
    ("heads_zero", setting("encoder_heads", 0), ["encoder_heads must be between 1"]),
    ("layers_bool", setting("decoder_layers", True), ["decoder_layers must be an integer, got True"]),
    ("mlp_ratio_text", setting("mlp_ratio", "four"), ["mlp_ratio must be a finite number, got 'four'"]),
    ("mlp_ratio_nan", lambda card: json.dumps(card).replace('"mlp_ratio": 4.0', '"mlp_ratio": NaN'),
     ["mlp_ratio must be a finite number, got nan"]),
    ("mask_ratio_infinite", lambda card: json.dumps(card).replace('"mask_ratio": 0.5', '"mask_ratio": Infinity'),
     ["mask_ratio must be a finite number"]),
    ("width_not_divisible", setting("encoder_heads", 3), ["divisible by its number of heads"]),
    ("huge_layers", lambda card: card["model_config"].update(encoder_layers=256, encoder_width=16384,
                                                             encoder_heads=16),
     ["the model settings need", "model.safetensors holds 160,320"]),
    ("width_absurd", setting("encoder_width", 10 ** 12), ["encoder_width must be between 1 and 16384"]),
    ("deep_json", raw_card(DEEP), ["cannot be read as JSON"]),
    ("nested_card", lambda card: card.update(training={"a": json.loads("[" * 40 + "]" * 40)}),
     ["nests more than 32 levels"]),
    ("card_a_list", raw_card("[1, 2, 3]"), ["not a barcodetool model card"]),
    ("card_truncated", lambda card: json.dumps(card)[:100], ["not valid JSON"]),
    ("model_config_text", lambda card: card.update(model_config="tiny"), ["model_config in the model card is not a "
                                                                         "JSON object"]),
    ("tokenizer_k_fractional", setting("k", 6.5, "tokenizer_config"), ["k must be an integer, got 6.5"]),
    ("tokenizer_too_long", setting("max_length", 10 ** 12, "tokenizer_config"), ["max_length must be at most"]),
    ("parts_not_names", lambda card: card.update(parts=[{"encoder": 1}]), ["parts must be"]),
    ("unknown_setting", setting("layers", 3), ["unknown model settings: layers"]),
]


@pytest.fixture(scope="module")
def plain_queries(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plain") / "q.fasta"
    path.write_text(">q1\n" + "ACGTTGCA" * 20 + "\n>q2\n" + "TTGACCAG" * 20 + "\n")
    return path


@pytest.mark.parametrize("case", CARD_CASES, ids=[case[0] for case in CARD_CASES])
def test_tampered_model_card_is_refused_with_one_line(case, model_dir, plain_queries, tmp_path):
    from barcodetool.errors import ModelError
    from barcodetool.model.weights import load_model

    name, change, words = case
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    card = edit_card(folder, change)
    with pytest.raises(ModelError) as caught:
        load_model(folder)
    assert_one_line(caught.value, [str(card), *words])
    result = invoke(["-q", "embed", str(plain_queries), "-m", str(folder), "-o", str(tmp_path / "out.h5"), *CPU])
    assert_one_error_line(result, [str(card), *words])
    assert not (tmp_path / "out.h5").exists()


def test_a_huge_card_is_refused_before_the_network_is_built(model_dir, tmp_path, monkeypatch):
    """The parameter count of the settings is checked against the weight file before anything is allocated."""
    import barcodetool.model.mae as mae
    from barcodetool.errors import ModelError
    from barcodetool.model.weights import load_model

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    edit_card(folder, lambda card: card["model_config"].update(encoder_layers=200, encoder_width=8192))

    def never(*args, **kwargs):
        raise AssertionError("the network was built before the settings were checked")
    monkeypatch.setattr(mae.BarcodeMAE, "__init__", never)
    with pytest.raises(ModelError, match="the model settings need"):
        load_model(folder)


def test_parameter_count_matches_the_network():
    from barcodetool.model.config import PRESETS
    from barcodetool.model.mae import BarcodeMAE

    for name in ("tiny", "nano", "mini"):
        for decoder in (True, False):
            network = BarcodeMAE(PRESETS[name], include_decoder=decoder)
            assert PRESETS[name].parameter_count(decoder) == sum(t.numel() for t in network.state_dict().values())


def test_a_tampered_card_fails_as_a_real_process(model_dir, plain_queries, tmp_path, subprocess_env):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    edit_card(folder, setting("mlp_ratio", "four"))
    run = subprocess.run([sys.executable, "-m", "barcodetool", "-q", "embed", str(plain_queries), "-m", str(folder),
                          "-o", str(tmp_path / "out.h5"), *CPU], capture_output=True, text=True, env=subprocess_env,
                         timeout=120)
    assert run.returncode == 1, run.stderr
    assert len(run.stderr.splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "mlp_ratio must be a finite number" in run.stderr


# ============================================================================================ ONNX graphs
@pytest.fixture(scope="module")
def exported_pair(tmp_path_factory, model_dir) -> tuple[Path, Path]:
    """A tiny model with its exported graph, and a model of other weights (same shapes) without one."""
    from barcodetool.model.onnx import export_onnx
    from barcodetool.model.weights import load_model_folder

    pytest.importorskip("onnx")
    root = tmp_path_factory.mktemp("onnx")
    folder = shutil.copytree(model_dir, root / "tiny-onnx")
    export_onnx(load_model_folder(folder))
    other = make_tiny_model(root / "other", seed=7)
    return folder, other


def test_a_graph_of_other_weights_is_refused_even_with_their_sha256(exported_pair, tmp_path):
    import onnx

    from barcodetool.errors import ModelError
    from barcodetool.model.onnx import ONNX_FILE, load_onnx_model
    from barcodetool.model.weights import read_card

    folder, other = exported_pair
    assert load_onnx_model(folder, threads=1) is not None   # the graph of its own weights loads
    forged = shutil.copytree(other, tmp_path / "forged")
    graph = onnx.load(str(folder / ONNX_FILE))
    for entry in graph.metadata_props:   # the metadata claims the other weights
        if entry.key == "tensors_sha256":
            entry.value = read_card(forged)["tensors_sha256"]
    onnx.save(graph, str(forged / ONNX_FILE))
    with pytest.raises(ModelError) as caught:
        load_onnx_model(forged, threads=1)
    assert_one_line(caught.value, [str(forged / ONNX_FILE), "exported from other weights",
                                   "its embeddings differ"])


def test_the_bundled_graphs_load_and_match_their_weights():
    pytest.importorskip("onnxruntime")
    from barcodetool.model.onnx import load_onnx_model

    for name in ("barcodemae-nano", "barcodemae-mini"):
        model = load_onnx_model(name, threads=1)   # a name resolves as load_model resolves it
        assert model is not None and model.name == name


def test_load_onnx_model_resolves_names_and_refuses_unknown_ones(tmp_path):
    from barcodetool.errors import ModelError
    from barcodetool.model.onnx import load_onnx_model

    with pytest.raises(ModelError, match="unknown model 'barcodemae-nope'"):
        load_onnx_model("barcodemae-nope")
    with pytest.raises(ModelError, match="no such model folder"):
        load_onnx_model(tmp_path / "missing")


def test_a_tampered_card_is_refused_on_the_onnx_path_too(exported_pair, tmp_path):
    pytest.importorskip("onnxruntime")
    from barcodetool.errors import ModelError
    from barcodetool.model.onnx import load_onnx_model

    folder = shutil.copytree(exported_pair[0], tmp_path / "model")
    edit_card(folder, setting("encoder_layers", 1.5))
    with pytest.raises(ModelError, match="encoder_layers must be an integer"):
        load_onnx_model(folder)


# ============================================================================================ embed()
def test_embed_refuses_gaps_and_other_characters(model_dir):
    import barcodetool

    model = load_tiny(model_dir)
    for sequences, words in ((["ACGTACGTAC", "ACGT-ACGT"], "sequence 1: '-' at position 5"),
                             (["acgtacgt"], "sequence 0: 'a' at position 1"),
                             (["ACGTACGT", "ACGTAC GT"], "sequence 1: ' ' at position 7"),
                             (["ACGTACGT", None], "sequence 1 is a NoneType, not a string")):
        with pytest.raises(InputError) as caught:
            barcodetool.embed(sequences, model=model)
        assert_one_line(caught.value, [words])
        if "position" in words:
            assert "barcodetool.io.clean_sequence" in str(caught.value)
    vectors = barcodetool.embed(["ACGTACGTAC", "ACGTNNRYKMACGT"], model=model)   # IUPAC codes stay accepted
    assert vectors.shape == (2, 32)


# ============================================================================================ training state
BIOSCAN = Path(__file__).resolve().parent / "data" / "bioscan_sample.csv"
TRAIN = ["--preset", "tiny", "--max-steps", "4", "--batch-size", "8", "--checkpoint-every", "2", "--log-every", "1",
         "--device", "cpu", "--threads", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("train") / "run"
    result = invoke(["-q", "train", str(BIOSCAN), *TRAIN, "-o", str(output)])
    assert result.exit_code == 0, (result.output, result.exception)
    return output


def edit_state(change):
    def edit(path: Path) -> None:
        state = json.loads(path.read_text())
        result = change(state)
        path.write_text(result if isinstance(result, str) else json.dumps(state))
    return edit


# name, change, words of the message
STATE_CASES = [
    ("not_json", edit_state(lambda state: "{not json"), ["unreadable training state"]),
    ("deep_json", edit_state(lambda state: DEEP), ["unreadable training state"]),
    ("a_list", edit_state(lambda state: "[1, 2]"), ["not a training checkpoint"]),
    ("missing_step", edit_state(lambda state: state.pop("step")), ["has no 'step'"]),
    ("missing_param_groups", edit_state(lambda state: state.pop("param_groups")), ["has no 'param_groups'"]),
    ("step_text", edit_state(lambda state: state.update(step="five")), ["step is 'five', not of the right type"]),
    ("step_negative", edit_state(lambda state: state.update(step=-3)), ["step -3 is not between 0 and"]),
    ("step_beyond_total", edit_state(lambda state: state.update(step=99)), ["step 99 is not between 0 and"]),
    ("format_version_text", edit_state(lambda state: state.update(format_version="x")), ["format_version 'x'"]),
    ("seconds_nan", edit_state(lambda state: json.dumps(state).replace('"seconds": ', '"seconds": NaN, "_": ')),
     ["world_size or seconds out of range"]),
    ("kind_number", edit_state(lambda state: state.update(kind=3)), ["kind is '3', not of the right type"]),
    ("param_groups_empty", edit_state(lambda state: state.update(param_groups=[])),
     ["param_groups do not fit this run's optimizer"]),
    ("param_groups_lr_text", edit_state(lambda state: state["param_groups"][0].update(lr="fast")),
     ["param_groups do not fit"]),
]


@pytest.mark.parametrize("case", STATE_CASES, ids=[case[0] for case in STATE_CASES])
def test_tampered_training_state_is_refused_on_resume(case, finished_run, tmp_path):
    from barcodetool.errors import ModelError
    from barcodetool.train import CHECKPOINT_DIR, STATE_FILE, read_training_state

    name, change, words = case
    output = shutil.copytree(finished_run, tmp_path / "run")
    state = output / CHECKPOINT_DIR / STATE_FILE
    change(state)
    if name not in ("param_groups_empty", "param_groups_lr_text"):   # those need the run's optimizer
        with pytest.raises(ModelError) as caught:
            read_training_state(output / CHECKPOINT_DIR)
        assert_one_line(caught.value, [str(state), *words])
    result = invoke(["-q", "train", str(BIOSCAN), *TRAIN, "-o", str(output), "--resume"])
    assert_one_error_line(result, [str(state), *words, "delete the checkpoint folder"])


def test_an_untampered_run_resumes(finished_run, tmp_path):
    output = shutil.copytree(finished_run, tmp_path / "run")
    result = invoke(["-q", "train", str(BIOSCAN), *TRAIN, "-o", str(output), "--resume"])
    assert result.exit_code == 0, (result.output, result.exception)
