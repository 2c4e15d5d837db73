"""The identity engine as a teacher (train.identity_teacher): the neighbour table against brute force, its file,
the sampler, the teacher's pair matrix, the ranking loss, and a short run that reads in phase and resumes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from barcodetool.cli import main
from barcodetool.errors import UsageError
from barcodetool.io import read_barcodes
from barcodetool.model.tokenizer import KmerTokenizer
from barcodetool.model.weights import load_model, load_model_folder, read_card
from barcodetool.search import score_candidates
from barcodetool.train import (CHECKPOINT_DIR, SUPCON_RANKS, NeighbourSampler, NeighbourTable, TrainConfig,
                               identity_teach, neighbour_loss, neighbour_table, read_corpus, read_training_state,
                               supcon_tokenizer)
from barcodetool.train.identity_teacher import IDENTITY_TEMPERATURE, TABLE_FILE, teacher_similarity

DATA = Path(__file__).resolve().parent / "data"
BIOSCAN = DATA / "bioscan_sample.csv"
SHORT = TrainConfig(preset="tiny", max_steps=2, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=1,
                    seed=0, device="cpu", anchors_per_batch=4, neighbours_per_anchor=2)


@pytest.fixture(scope="module")
def sequences() -> list[str]:
    return list(dict.fromkeys(r.sequence for r in read_barcodes(BIOSCAN)))[:80]


@pytest.fixture(scope="module")
def table(sequences) -> NeighbourTable:
    return neighbour_table(sequences, neighbours=5, candidates=len(sequences) - 1, block=32, threads=2)


def test_table_holds_the_nearest_by_identity_best_first(sequences, table):
    # with every other sequence a candidate, the table is the brute-force ranking
    n = len(sequences)
    everyone = np.array([[j for j in range(n) if j != i] for i in range(n)])
    score, _, _ = score_candidates(sequences, sequences, everyone)
    assert table.rows.shape == (n, 5) and (table.rows != np.arange(n)[:, None]).all()
    assert (np.diff(table.similarity, axis=1) <= 0).all()
    np.testing.assert_allclose(table.similarity, -np.sort(-score, axis=1)[:, :5], rtol=1e-6)
    best = everyone[np.arange(n), score.argmax(1)]
    unique_best = (np.sort(score, axis=1)[:, -1] > np.sort(score, axis=1)[:, -2])
    np.testing.assert_array_equal(table.rows[unique_best, 0], best[unique_best])


def test_table_file_round_trip_and_version(table, tmp_path):
    path = tmp_path / TABLE_FILE
    replace(table, fingerprint="abc").save(path)
    back = NeighbourTable.load(path)
    np.testing.assert_array_equal(back.rows, table.rows)
    np.testing.assert_array_equal(back.similarity, table.similarity)
    assert back.fingerprint == "abc"
    np.savez(path, rows=table.rows, similarity=table.similarity, fingerprint=np.array("abc"), version=np.array(99))
    with pytest.raises(UsageError, match="version 99"):
        NeighbourTable.load(path)


def test_sampler_puts_each_anchor_before_its_nearest_and_repeats_for_a_seed(table):
    sampler = NeighbourSampler(table, anchors=6, per_anchor=3)
    rows = sampler.rows(11)
    assert len(rows) == sampler.batch_size == 24
    groups = rows.reshape(6, 4)
    assert len(set(groups[:, 0].tolist())) == 6
    np.testing.assert_array_equal(groups[:, 1], table.rows[groups[:, 0], 0])
    for anchor, *others in groups:
        assert set(others) <= set(table.rows[anchor].tolist())
    np.testing.assert_array_equal(rows, sampler.rows(11))
    assert not np.array_equal(rows, sampler.rows(12))
    with pytest.raises(UsageError):
        NeighbourSampler(replace(table, rows=np.full_like(table.rows, -1)), anchors=4, per_anchor=1)


def test_teacher_matrix_is_symmetric_and_knows_only_listed_pairs():
    rows = torch.tensor([[1, 2], [0, -1], [0, -1], [-1, -1]])
    sim = torch.tensor([[0.99, 0.95], [0.99, -np.inf], [0.95, -np.inf], [-np.inf, -np.inf]])
    batch = torch.tensor([0, 1, 2, 3, 1])
    teacher = teacher_similarity(batch, rows, sim)
    assert torch.equal(torch.isfinite(teacher), torch.isfinite(teacher.T))
    assert float(teacher[0, 1]) == pytest.approx(0.99) and float(teacher[2, 0]) == pytest.approx(0.95)
    assert not torch.isfinite(teacher[1, 4]) and not torch.isfinite(teacher.diagonal()).any()   # one row twice
    assert not torch.isfinite(teacher[3]).any() and not torch.isfinite(teacher[1, 2])


def test_loss_prefers_the_teachers_order():
    batch = torch.tensor([0, 1, 2, 3])
    teacher = torch.full((4, 4), float("-inf"))
    teacher[0, 1] = teacher[1, 0] = 0.99
    teacher[0, 2] = teacher[2, 0] = 0.95
    right = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.9, -0.4], [0.0, 1.0]]), dim=-1)
    wrong = right[[0, 2, 1, 3]]
    same = batch[:, None] == batch[None, :]
    good, agree, queries = neighbour_loss(right, teacher, same, 0.05, 0.01)
    bad, agree_bad, _ = neighbour_loss(wrong, teacher, same, 0.05, 0.01)
    assert float(good) < float(bad)
    assert int(queries) == 3 and int(agree) == 3 and int(agree_bad) < 3
    z = right.clone().requires_grad_(True)
    loss, _, _ = neighbour_loss(torch.nn.functional.normalize(z, dim=-1), teacher, same, 0.05, 0.01)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad[3].abs().sum() > 0   # the unrelated row is pushed away


def test_loss_beyond_a_species_hides_it_and_ranks_the_others():
    from barcodetool.train.identity_teacher import own_group

    # rows 0 and 1 one species; 2 a congener (0.92 to row 0), 3 further (0.85); row 4 unlabelled, 0.98 to row 3
    batch = torch.arange(5)
    teacher = torch.full((5, 5), float("-inf"))
    for i, j, value in ((0, 1, 0.99), (0, 2, 0.92), (0, 3, 0.85), (3, 4, 0.98)):
        teacher[i, j] = teacher[j, i] = value
    species = torch.tensor([0, 0, 1, 2, -1])
    group = own_group(species, teacher)
    assert bool(group[0, 1]) and not bool(group[0, 2]) and bool(group[3, 4]) and not bool(group[2, 4])
    hidden = (batch[:, None] == batch[None, :]) | group
    # row 0 sees rows 2 and 3 only: the congener must come first, whatever row 1 does
    congener_first = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.0], [-1.0, 0.0], [0.9, 0.3], [0.6, -0.8], [0.6, -0.8]]), dim=-1)
    swapped = congener_first[[0, 1, 3, 2, 4]]
    good, agree, queries = neighbour_loss(congener_first, teacher, hidden, 0.05, 0.01)
    bad, _, _ = neighbour_loss(swapped, teacher, hidden, 0.05, 0.01)
    assert float(good) < float(bad) and int(queries) == 3 and int(agree) == 3   # rows 0, 2, 3 (1 and 4: nothing)
    z = congener_first.clone().requires_grad_(True)
    everything_hidden = torch.ones(5, 5, dtype=torch.bool)
    loss, _, none = neighbour_loss(torch.nn.functional.normalize(z, dim=-1), teacher, everything_hidden, 0.05, 0.01)
    loss.backward()
    assert int(none) == 0 and torch.isfinite(z.grad).all()


def test_identity_run_on_a_tiny_model_reads_in_phase_and_resumes(tiny_model_dir, tmp_path):
    base = load_model(tiny_model_dir)
    tokenizer = KmerTokenizer(supcon_tokenizer(base, "coi5p"))
    corpus = read_corpus([str(BIOSCAN)], tokenizer, label_ranks=SUPCON_RANKS)
    config = replace(SHORT, label_weight=0.5)
    result = identity_teach(corpus, base, config=config, output=tmp_path / "id", phase="coi5p")
    assert result.steps == 2 and (tmp_path / "id" / TABLE_FILE).exists()
    card = read_card(tmp_path / "id")
    assert card["training"]["kind"] == "identity" and card["tokenizer_config"]["phase"] == "coi5p"
    assert card["training"]["batch_size"] == 12 and card["training"]["config"]["label_weight"] == 0.5
    # a library caller's default temperature is the objective's own (supcon's 0.1 would be the wrong default)
    assert SHORT.temperature is None and card["training"]["config"]["temperature"] == IDENTITY_TEMPERATURE == 0.05
    after = load_model_folder(tmp_path / "id")
    assert not torch.equal(base.model.token_embedding.weight, after.model.token_embedding.weight)
    with pytest.raises(UsageError, match="resume"):
        identity_teach(corpus, base, config=config, output=tmp_path / "id", phase="coi5p")
    stamp = (tmp_path / "id" / TABLE_FILE).stat().st_mtime_ns
    resumed = identity_teach(corpus, base, config=replace(config, max_steps=3), output=tmp_path / "id",
                             phase="coi5p", resume=True)
    assert resumed.steps == 3 and read_training_state(tmp_path / "id" / CHECKPOINT_DIR)["kind"] == "identity"
    assert (tmp_path / "id" / TABLE_FILE).stat().st_mtime_ns == stamp   # the table is read back, not recomputed
    # another corpus: the table is refused, not silently reused
    other = read_corpus([str(BIOSCAN)], tokenizer, label_ranks=SUPCON_RANKS, include_splits=["train"])
    table = NeighbourTable.load(tmp_path / "id" / TABLE_FILE)
    with pytest.raises(UsageError, match="other sequences"):
        identity_teach(other, base, config=config, output=tmp_path / "id2", table=table)


def test_train_cli_identity_objective_needs_no_labels(tiny_model_dir, tmp_path):
    fasta = tmp_path / "reads.fasta"
    fasta.write_text("".join(f">r{i}\n{s}\n" for i, s in enumerate(
        dict.fromkeys(r.sequence for r in read_barcodes(BIOSCAN)))))
    runner = CliRunner()
    result = runner.invoke(main, ["-q", "train", str(fasta), "--objective", "identity", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--init" in result.output
    result = runner.invoke(main, ["-q", "train", str(fasta), "--objective", "identity", "--init", str(tiny_model_dir),
                                  "--phase", "coi5p", "--max-steps", "1", "--anchors-per-batch", "3",
                                  "--neighbours-per-anchor", "1", "-o", str(tmp_path / "id"), "--device", "cpu",
                                  "--threads", "1"])
    assert result.exit_code == 0, result.output
    card = read_card(tmp_path / "id")
    assert card["training"]["kind"] == "identity" and card["training"]["batch_size"] == 6
    assert card["training"]["config"]["temperature"] == 0.05


def test_table_reaches_beyond_each_species(sequences):
    species = {r.sequence: r.taxonomy.get("species") or "" for r in read_barcodes(BIOSCAN)}
    names = sorted({species[s] for s in sequences})
    groups = np.array([names.index(species[s]) if species[s] else -1 for s in sequences])
    n = len(sequences)
    table = neighbour_table(sequences, neighbours=6, beyond=3, groups=groups, candidates=n - 1, block=32)
    everyone = np.array([[j for j in range(n) if j != i] for i in range(n)])
    score, _, _ = score_candidates(sequences, sequences, everyone)
    for i in range(n):
        listed = table.rows[i][table.rows[i] >= 0]
        assert len(set(listed.tolist())) == len(listed) and i not in listed
        assert (np.diff(table.similarity[i][: len(listed)]) <= 0).all()
        if groups[i] < 0:
            continue
        others = everyone[i][groups[everyone[i]] != groups[i]]
        other_scores = np.sort(score[i][groups[everyone[i]] != groups[i]])[::-1]
        listed_others = listed[groups[listed] != groups[i]]
        assert len(listed_others) >= min(3, len(others))
        # the nearest other-species neighbour is listed (up to a tie at its score)
        nearest = score[i][np.isin(everyone[i], listed_others)].max()
        assert nearest == pytest.approx(other_scores[0], rel=1e-6)
    with pytest.raises(UsageError, match="one value per sequence"):
        neighbour_table(sequences, groups=groups[:-1])
