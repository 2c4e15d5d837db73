"""Token parts (train.composition): the part matrix, a start that changes nothing, saved models that load as any
other (the summed table), and an exact resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from barcodetool.errors import UsageError
from barcodetool.model.mae import BarcodeMAE, preset
from barcodetool.model.tokenizer import NUM_SPECIAL, KmerTokenizer
from barcodetool.model.weights import TENSORS_FILE, load_model_folder, read_card
from barcodetool.train import CHECKPOINT_DIR, OPTIMIZER_FILE, TrainConfig, pretrain, read_corpus
from barcodetool.train.composition import attach_token_parts, load_summed, part_matrix, token_parts_of

DATA = Path(__file__).resolve().parent / "data"
BIOSCAN = DATA / "bioscan_sample.csv"
SHORT = TrainConfig(preset="tiny", max_steps=8, batch_size=8, lr=3e-3, warmup_steps=2, log_every=1,
                    checkpoint_every=4, val_fraction=0.05, seed=0, device="cpu", token_parts=(1, 3))


def test_part_matrix_marks_each_tokens_bases_and_triplets():
    tokenizer = KmerTokenizer()
    parts = part_matrix(6, (1, 3))
    assert parts.shape == (NUM_SPECIAL + 4 ** 6, 6 * 4 + 4 * 64)
    assert not parts[:NUM_SPECIAL].any()
    assert (parts[NUM_SPECIAL:].sum(axis=1) == 6 + 4).all()     # a base per position, a 3-mer per offset
    row = parts[tokenizer.token_to_id("ACGTTG")]
    code = {"A": 0, "C": 1, "G": 2, "T": 3}
    expected = [4 * q + code[b] for q, b in enumerate("ACGTTG")]
    for offset in range(4):
        triplet = "ACGTTG"[offset:offset + 3]
        expected.append(24 + 64 * offset + 16 * code[triplet[0]] + 4 * code[triplet[1]] + code[triplet[2]])
    assert sorted(np.flatnonzero(row).tolist()) == sorted(expected)
    # two tokens one base apart share all but the parts that hold that base
    a, b = parts[tokenizer.token_to_id("ACGTTG")], parts[tokenizer.token_to_id("ACGTTA")]
    assert int((a * b).sum()) == 5 + 3
    for bad in ((), (0,), (6,), (3, 3)):
        with pytest.raises(UsageError, match="token parts"):
            part_matrix(6, bad)


def test_attached_parts_change_nothing_until_trained_and_save_as_one_table():
    torch.manual_seed(0)
    model = BarcodeMAE(preset("tiny"), include_decoder=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(NUM_SPECIAL, NUM_SPECIAL + 4 ** 6, (3, 20))
    lengths = torch.tensor([20, 15, 9])
    start = model.embed(ids, lengths)
    parts = attach_token_parts(model, KmerTokenizer().config, (1, 3))
    assert token_parts_of(model) is parts
    torch.testing.assert_close(model.embed(ids, lengths), start)
    with torch.no_grad():
        parts.basis.normal_()
    moved = model.embed(ids, lengths)
    assert not torch.allclose(moved, start)
    plain = model.plain_state_dict()
    assert set(plain) == set(before)                               # the saved names of a model without parts
    torch.testing.assert_close(plain["token_embedding.weight"], before["token_embedding.weight"] + parts.shared())
    fresh = BarcodeMAE(preset("tiny"), include_decoder=False)
    fresh.load_state_dict(plain, strict=True)
    torch.testing.assert_close(fresh.embed(ids, lengths), moved)
    # loading a summed table back gives the own rows and the basis again
    again = BarcodeMAE(preset("tiny"), include_decoder=False)
    attach_token_parts(again, KmerTokenizer().config, (1, 3))
    load_summed(again, plain, parts.basis.detach())
    torch.testing.assert_close(again.token_embedding.parametrizations.weight.original,
                               before["token_embedding.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(again.embed(ids, lengths), moved)
    with pytest.raises(UsageError, match="already"):
        attach_token_parts(again, KmerTokenizer().config, (1,))
    with pytest.raises(UsageError, match="token_parts"):
        TrainConfig(token_parts=(0,))


def test_a_run_with_token_parts_saves_a_plain_model_and_resumes_exactly(tmp_path):
    corpus = read_corpus([str(BIOSCAN)], KmerTokenizer())
    pretrain(corpus, config=SHORT, output=tmp_path / "whole")
    card = read_card(tmp_path / "whole")
    assert card["training"]["config"]["token_parts"] == [1, 3]
    loaded = load_model_folder(tmp_path / "whole")                  # strict: one token table, no parts
    assert "token_embedding.weight" in loaded.model.state_dict()
    basis = safetensors.torch.load_file(str(tmp_path / "whole" / CHECKPOINT_DIR / OPTIMIZER_FILE))
    assert float(basis["token_parts.basis"].abs().sum()) > 0       # the parts were trained

    def interrupt(step, total, entry):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, config=SHORT, output=tmp_path / "cut", progress=interrupt)
    pretrain(corpus, config=SHORT, output=tmp_path / "cut", resume=True)
    whole = safetensors.torch.load_file(str(tmp_path / "whole" / TENSORS_FILE))
    cut = safetensors.torch.load_file(str(tmp_path / "cut" / TENSORS_FILE))
    assert whole.keys() == cut.keys()
    for key in whole:   # the own rows come back as the saved table less the parts: equal to float rounding
        torch.testing.assert_close(cut[key], whole[key], atol=1e-5, rtol=0)
    # a checkpoint without parts does not resume a run with them, nor the reverse
    with pytest.raises(Exception, match="fit|token parts"):
        pretrain(corpus, config=replace(SHORT, token_parts=()), output=tmp_path / "cut", resume=True)


def test_train_cli_token_parts(tmp_path):
    from click.testing import CliRunner

    from barcodetool.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["-q", "train", str(BIOSCAN), "--preset", "tiny", "--max-steps", "1",
                                  "--batch-size", "8", "--token-parts", "1,3", "-o", str(tmp_path / "t"),
                                  "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert read_card(tmp_path / "t")["training"]["config"]["token_parts"] == [1, 3]
    load_model_folder(tmp_path / "t")
    for bad in ("1,x", "0", "3,3"):
        result = runner.invoke(main, ["-q", "train", str(BIOSCAN), "--token-parts", bad, "-o", str(tmp_path / "u")])
        assert result.exit_code == 2 and "--token-parts" in result.output
    result = runner.invoke(main, ["-q", "train", str(BIOSCAN), "--preset", "tiny", "--max-steps", "1",
                                  "--token-parts", "6", "-o", str(tmp_path / "v"), "--device", "cpu"])
    assert result.exit_code == 2 and "token parts must be distinct sizes between 1 and 5" in result.output
