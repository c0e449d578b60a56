"""Downstream evaluation (rqvae.retrieval): the trie and beam emit only real items, the NLL is a proper
distribution, the split never leaks, the statistics are right, and a retriever actually learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rqvae.cli import EXIT_BAD_INPUT, EXIT_OK, main
from rqvae.errors import InputError
from rqvae.io.idfile import SemanticIdWriter
from rqvae.io.interactions import Interactions, count_test_events, held_out, split_events, write_interactions
from rqvae.modes import Protocol
from rqvae.retrieval import (
    IdTable,
    PrefixIndex,
    RetrievalConfig,
    RetrievalReport,
    Retriever,
    Sequences,
    TokenLayout,
    beam_search,
    evaluate_id_sets,
    exact_nll,
    mean_se,
    paired_diff,
    prepare_split,
    random_ids,
    rank_of,
    ranking_metrics,
)

TINY = {"history": 4, "d_model": 16, "layers": 1, "heads": 2, "dropout": 0.0, "device": "cpu"}


def crowded_table(n: int = 60, sizes: tuple[int, ...] = (3, 4), seed: int = 0) -> IdTable:
    """Few codes for many items: deep dedup levels and uneven branching, the hard case for the trie."""
    return random_ids(np.arange(100, 100 + n) * 7, sizes, seed)


def full_ids(table: IdTable) -> np.ndarray:
    return np.column_stack([table.codes, table.dedup]).astype(np.int64)


def test_id_table_and_layout() -> None:
    table = crowded_table()
    layout = TokenLayout.of(table)
    assert layout.sizes == (3, 4, int(table.dedup.max()) + 1)
    tokens = layout.item_tokens(table)
    assert tokens.min() >= 0 and tokens.max() < layout.bos < layout.pad < layout.vocab_size
    for level in range(layout.depth):  # each level has its own block
        assert np.all((tokens[:, level] >= layout.offsets[level]) & (tokens[:, level] < layout.offsets[level + 1]))
    with pytest.raises(InputError, match="not unique"):
        IdTable(np.array([1, 2]), np.array([[0, 1], [0, 1]]), np.array([0, 0]))
    with pytest.raises(InputError, match="duplicate item ids"):
        IdTable(np.array([1, 1]), np.array([[0, 1], [0, 2]]), np.array([0, 0]))


def test_allowed_next_codes_match_brute_force() -> None:
    table = crowded_table()
    index = PrefixIndex(table)
    rows = full_ids(table)
    rng = np.random.default_rng(1)
    for depth in range(index.depth):
        # prefixes of real IDs and random ones (some leave the trie)
        real = rows[rng.integers(0, len(rows), 20), :depth]
        fake = rng.integers(0, np.array(index.sizes[:depth], np.int64) + 1, size=(20, depth))
        for prefix in np.concatenate([real, fake]):
            match = rows[np.all(rows[:, :depth] == prefix, axis=1)]
            assert np.array_equal(index.allowed(prefix), np.unique(match[:, depth])), (depth, prefix)
    assert np.array_equal(index.lookup(rows), table.item_ids)
    missing = rows[:5].copy()
    missing[:, -1] = index.sizes[-1] + 3
    assert np.all(index.lookup(missing) == -1)


def _tiny_model(table: IdTable, seed: int = 0) -> Retriever:
    torch.manual_seed(seed)
    model = Retriever(TokenLayout.of(table), max_items=4, d_model=16, layers=2, heads=2, dropout=0.0)
    with torch.no_grad():  # larger random weights: peaked, distinct distributions
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def _prompts(table: IdTable, users: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random histories of 0..3 items (right-padded), as Sequences.prompts lays them out."""
    layout = TokenLayout.of(table)
    item_tokens = layout.item_tokens(table)
    rng = np.random.default_rng(seed)
    tokens = np.full((users, 1 + 3 * layout.depth), layout.pad)
    tokens[:, 0] = layout.bos
    lengths = rng.integers(0, 4, users)
    for u, n in enumerate(lengths):
        tokens[u, 1 : 1 + n * layout.depth] = item_tokens[rng.integers(0, len(table), n)].ravel()
    return torch.from_numpy(tokens), torch.from_numpy(1 + lengths * layout.depth)


def test_exact_nll_is_a_distribution_over_real_items() -> None:
    table = crowded_table()
    model = _tiny_model(table)
    index = PrefixIndex(table)
    tokens, lengths = _prompts(table, 3)
    for u in range(3):
        n = len(table)
        nll = exact_nll(model, index, tokens[u : u + 1].repeat(n, 1), lengths[u : u + 1].repeat(n), full_ids(table))
        assert np.all(np.isfinite(nll))
        assert np.exp(-nll).sum() == pytest.approx(1.0, abs=1e-5)


def test_beam_yields_real_items_ranked_by_exact_likelihood() -> None:
    table = crowded_table()
    model = _tiny_model(table, seed=3)
    index = PrefixIndex(table)
    tokens, lengths = _prompts(table, 4, seed=2)
    items, scores = beam_search(model, index, tokens, lengths, beam=8)
    real = set(table.item_ids.tolist())
    assert all(i in real for i in items.ravel())
    assert all(len(set(row)) == len(row) for row in items.tolist())
    # with a beam as wide as the catalogue the search is exhaustive: every item, in exact-likelihood order
    n = len(table)
    items, scores = beam_search(model, index, tokens, lengths, beam=n + 5)
    for u in range(len(lengths)):
        nll = exact_nll(model, index, tokens[u : u + 1].repeat(n, 1), lengths[u : u + 1].repeat(n), full_ids(table))
        order = np.argsort(nll, kind="stable")
        assert sorted(items[u, :n].tolist()) == sorted(table.item_ids.tolist())
        assert np.all(items[u, n:] == -1) and np.all(np.isneginf(scores[u, n:]))
        np.testing.assert_allclose(scores[u, :n], -nll[order], rtol=1e-4, atol=1e-4)


def _unique_tail_interactions(users: int = 12, per_user: int = 9, items: int = 30) -> Interactions:
    """Every user's last two events are items nobody else has: any leak of them is visible."""
    rng = np.random.default_rng(5)
    u, i, t = [], [], []
    for user in range(users):
        seq = list(rng.integers(0, items, per_user - 2)) + [1000 + 2 * user, 1001 + 2 * user]
        u += [user] * per_user
        i += seq
        t += list(np.arange(per_user) + 10 * user)
    # given newest first: from_arrays must put them back in time order
    return Interactions.from_arrays(np.array(u[::-1]), np.array(i[::-1]), np.array(t[::-1]))


def test_split_never_leaks_validation_or_test_items() -> None:
    events = _unique_tail_interactions()
    catalogue = np.unique(events.item_id)
    table = random_ids(catalogue, [8, 8], seed=1)
    prepared = prepare_split(events, catalogue, Protocol.LEAVE_ONE_OUT, 3)
    split = prepared.split
    held_out = set(split.valid.tolist()) | set(split.test_items.tolist())
    assert held_out == set(range(1000, 1024))
    assert not held_out & set(split.train_items.tolist())
    assert not held_out & set(split.train_interactions().item_id.tolist())
    seqs = Sequences(split, table, history=3)
    index = PrefixIndex(table)
    layout = seqs.layout

    def items_of(tokens: np.ndarray) -> list[int]:
        body = tokens[:, 1:]
        body = body[:, : body.shape[1] // layout.depth * layout.depth].reshape(len(tokens), -1, layout.depth)
        real = body[body[:, :, 0] != layout.pad]
        return index.lookup(real - layout.offsets[:-1]).tolist()

    windows = seqs.windows(np.random.default_rng(0))
    assert sorted(items_of(windows)) == sorted(split.train_items.tolist())  # every training event, once
    users = np.arange(len(split))
    valid_prompt = items_of(seqs.prompts(users, split.valid_positions)[0])
    assert not held_out & set(valid_prompt)
    test_prompt, _, target, _ = seqs.prompts(*split.test_positions())
    assert not set(split.test_items.tolist()) & set(items_of(test_prompt))
    assert set(split.valid.tolist()) <= set(items_of(test_prompt))  # the test prompt ends with the valid item
    assert np.array_equal(index.lookup(target), split.test_items)


def test_items_without_ids_and_short_users_are_dropped_and_counted() -> None:
    events = Interactions.from_arrays(np.array([1, 1, 1, 1, 2, 2, 2]), np.array([5, 6, 99, 7, 5, 99, 6]),
                                      np.arange(7))
    prepared = prepare_split(events, np.array([5, 6, 7]), Protocol.LEAVE_ONE_OUT, 3)
    assert prepared.dropped_interactions == 2 and prepared.dropped_users == 1
    assert prepared.split.users.tolist() == [1] and prepared.split.test_items.tolist() == [7]


def test_paired_se_matches_hand_computation() -> None:
    a = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # 2 seeds x 4 users
    b = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    report = RetrievalReport(["a", "b"], [0, 1], np.arange(4), np.arange(4), np.array([True, False, True, False]),
                             {"a": {m: a for m in ("recall@5", "recall@10", "ndcg@10", "nll")},
                              "b": {m: b for m in ("recall@5", "recall@10", "ndcg@10", "nll")}})
    diff = [0.5 - 0.0, 0.0 - 0.5, 1.0 - 0.5, 1.0 - 0.0]  # seed-averaged per user, then a - b
    mean = sum(diff) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diff) / 3)
    runs = [0.5, 0.25]  # each seed's mean difference: their spread is seed noise, added to the users' SE
    between = sum((r - 0.375) ** 2 for r in runs) / 1 / 2
    stat = report.paired("a", "b", "recall@10")
    assert stat.mean == pytest.approx(mean) and stat.se == pytest.approx(math.sqrt((sd / 2) ** 2 + between))
    assert stat.n == 4 and stat.users == 4
    cold = report.paired("a", "b", "recall@10", "cold")  # users 0 and 2
    assert cold.mean == pytest.approx(0.5) and cold.se == pytest.approx(0.0) and cold.n == 2
    assert report.summary("a", "nll", seed=1).mean == pytest.approx(0.5)
    assert paired_diff(np.array([1.0, 2.0]), np.array([1.0, 1.0])).se == pytest.approx(0.5)
    json.dumps(report.to_dict())
    assert "(cold)" in report.table()


def test_temporal_split_tests_the_last_fifth_of_each_user_and_never_trains_on_it() -> None:
    """Per user: the last clip(floor(0.2 n), 1, 20) events are test events, the one before validates, only the rest
    is trained on; each test event's prompt is the events right before it (earlier test events included)."""
    lengths = [3, 4, 9, 10, 14, 60, 150]
    users = np.repeat(np.arange(len(lengths)), lengths)
    items = np.concatenate([np.arange(n) + 1000 * u for u, n in enumerate(lengths)])  # item = 1000 u + position
    events = Interactions.from_arrays(users, items, np.concatenate([np.arange(n) for n in lengths]))
    split = split_events(events, Protocol.TEMPORAL)
    assert count_test_events(np.array(lengths), Protocol.TEMPORAL).tolist() == [1, 1, 1, 2, 2, 12, 20]
    assert split.n_test.tolist() == [1, 1, 1, 2, 2, 12, 20] and split.n_train.tolist() == [1, 2, 7, 7, 11, 47, 129]
    assert held_out(np.array(lengths), Protocol.LEAVE_ONE_OUT).tolist() == [2] * len(lengths)
    test_items = split.test_items
    position = test_items % 1000
    assert np.all(position >= np.repeat(np.array(lengths) - split.n_test, split.n_test)), "only the last events"
    trained = set(split.train_interactions().item_id.tolist())
    assert not trained & (set(test_items.tolist()) | set(split.valid.tolist()))
    assert len(trained) + len(test_items) + len(split) == sum(lengths)  # every event in exactly one part
    table = random_ids(np.unique(items), [4, 4], seed=0)
    seqs = Sequences(split, table, history=5)
    index = PrefixIndex(table)
    tokens, lengths_, target, _ = seqs.prompts(*split.test_positions())
    depth = seqs.layout.depth
    for row in range(len(test_items)):  # the prompt is the (up to) five events right before the test event
        body = tokens[row, 1 : lengths_[row]].reshape(-1, depth) - seqs.layout.offsets[:-1]
        before = index.lookup(body).tolist()
        item = int(test_items[row])
        assert before == list(range(max(item - 5, item - item % 1000), item)), (item, before)
    assert np.array_equal(index.lookup(target), test_items)
    with pytest.raises(ValueError, match="protocol"):
        split_events(events, "random")


def test_clustered_se_matches_a_hand_computation() -> None:
    """Events of one user are not independent: the SE is clustered by user (CR1), and equals the ordinary SE
    when each user has one event."""
    values = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    users = np.array([0, 0, 0, 1, 2, 2])  # user 0: three events, user 1: one, user 2: two
    mean = 0.5
    sums = [(1 - mean) + (0 - mean) + (1 - mean), 1 - mean, (0 - mean) + (0 - mean)]  # 0.5, 0.5, -1.0
    expected = math.sqrt(3 / 2 * sum(x * x for x in sums) / 6**2)
    stat = mean_se(values, users)
    assert stat.mean == pytest.approx(mean) and stat.se == pytest.approx(expected) and stat.users == 3
    iid = mean_se(values)  # one user per event: the textbook SE
    assert iid.se == pytest.approx(np.std(values, ddof=1) / math.sqrt(6)) and iid.se < stat.se
    assert math.isnan(mean_se(values, np.zeros(6)).se)  # one user: no spread to estimate from


def test_ranking_metrics_by_hand() -> None:
    items = np.array([[5, 7, -1], [7, 5, -1], [1, 2, 3]])
    scores = np.array([[-1.0, -2.0, -np.inf], [-1.0, -2.0, -np.inf], [-1.0, -2.0, -3.0]])
    assert rank_of(items, np.array([7, -1, 4]), scores).tolist() == [1, -1, -1]  # a dead beam is no item
    m = ranking_metrics(np.array([0, 4, 9, 10, -1]))
    assert m["recall@5"].tolist() == [1, 1, 0, 0, 0] and m["recall@10"].tolist() == [1, 1, 1, 0, 0]
    np.testing.assert_allclose(m["ndcg@10"], [1, 1 / math.log2(6), 1 / math.log2(11), 0, 0])


def _sequential_events(users: int = 60, length: int = 12, items: int = 32, seed: int = 0) -> Interactions:
    """Users walk a fixed cycle of items (item k -> k + 1) from random starts: the next item is determined."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, items, users)
    item = (start[:, None] + np.arange(length)) % items
    return Interactions.from_arrays(np.repeat(np.arange(users), length), item.ravel(),
                                    np.tile(np.arange(length), users))


def test_retriever_learns_a_sequential_pattern_and_is_reproducible() -> None:
    events = _sequential_events()
    catalogue = np.arange(32)
    structured = IdTable(catalogue, np.column_stack([catalogue // 8, catalogue % 8]), np.zeros(32, np.int32), (4, 8))
    sets = {"structured": structured, "random": random_ids(catalogue, [4, 8], seed=0)}
    cfg = RetrievalConfig(**TINY, epochs=6, batch_size=16, lr=1e-2, warmup_steps=5, beam=10)
    report = evaluate_id_sets(sets, events, cfg, seeds=(0,))
    assert report.summary("structured", "recall@10").mean >= 0.9, report.table()  # chance is 10 / 32
    # IDs whose prefixes follow the walk generalise; random ones must be memorised item by item
    gap = report.paired("random", "structured", "nll")
    assert gap.mean > 5 * gap.se and gap.mean > 0.5, report.table()
    short = RetrievalConfig(**{**TINY, "dropout": 0.1}, epochs=2, batch_size=16, lr=1e-2, warmup_steps=5, beam=10)
    first, again = (evaluate_id_sets({"s": structured}, events, short, seeds=(3,)) for _ in range(2))
    for metric in ("nll", "recall@10"):  # seeded windows, shuffles, init and dropout: the same numbers
        np.testing.assert_array_equal(again.per_event["s"][metric], first.per_event["s"][metric])


def test_cached_runs_are_reused_only_for_the_same_ids_split_config_and_seed(tmp_path: Path, monkeypatch) -> None:
    """A benchmark split over processes: a second call with the cache retrains nothing and reports the same
    numbers; other IDs, another seed or another config are trained afresh."""
    import rqvae.retrieval.evaluate as evaluate_module
    from rqvae.retrieval.cache import RunCache

    events = _sequential_events(users=30)
    catalogue = np.arange(32)
    structured = IdTable(catalogue, np.column_stack([catalogue // 8, catalogue % 8]), np.zeros(32, np.int32), (4, 8))
    cfg = RetrievalConfig(**TINY, epochs=1, batch_size=16, lr=1e-2, warmup_steps=5, beam=10)
    cache = RunCache(tmp_path / "runs")
    first = evaluate_id_sets({"s": structured}, events, cfg, seeds=(0,), cache=cache)
    trained: list[int] = []
    real = evaluate_module.train_and_score

    def counting(*args, **kwargs):
        trained.append(args[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "train_and_score", counting)
    again = evaluate_id_sets({"s": structured}, events, cfg, seeds=(0,), cache=cache)
    assert trained == []
    for metric in ("nll", "recall@10"):
        np.testing.assert_array_equal(again.per_event["s"][metric], first.per_event["s"][metric])
    assert again.runs["s"][0]["best_epoch"] == first.runs["s"][0]["best_epoch"]
    evaluate_id_sets({"r": random_ids(catalogue, [4, 8], seed=0)}, events, cfg, seeds=(0,), cache=cache)
    evaluate_id_sets({"s": structured}, events, cfg, seeds=(1,), cache=cache)
    evaluate_id_sets({"s": structured}, events, RetrievalConfig(**{**TINY, "d_model": 8}, epochs=1, batch_size=16,
                                                                 lr=1e-2, warmup_steps=5, beam=10), seeds=(0,),
                     cache=cache)
    assert trained == [0, 1, 0]


def _write_ids(path: Path, table: IdTable) -> Path:
    with SemanticIdWriter(path, table.levels) as writer:
        writer.write(table.item_ids, table.codes, table.dedup)
    return path


def test_cli_compares_id_files_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    events = _sequential_events(users=20, length=6)
    interactions = write_interactions(tmp_path / "events", events)
    ours = _write_ids(tmp_path / "ours.parquet", random_ids(np.arange(32), [4, 8], seed=0))
    other = _write_ids(tmp_path / "other.parquet", random_ids(np.arange(32), [4, 8], seed=1))
    argv = ["--quiet", "evaluate-retrieval", "--ids", str(ours), "--ids", str(other), "--interactions",
            str(interactions), "--epochs", "1", "--history", "3"]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "| ours |" in out and "| other |" in out and "(cold)" in out
    assert main([*argv, "--json", "--name", "a", "--name", "b", "--seeds", "0,1"]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["n_users"] == 20 and result["seeds"] == [0, 1] and result["protocol"] == "leave_one_out"
    assert result["n_events"] == 20
    assert set(result["id_sets"]["b"]["all_vs_a"]) == {"recall@5", "recall@10", "ndcg@10", "nll"}
    assert main([*argv, "--json", "--protocol", "temporal"]) == EXIT_OK
    temporal = json.loads(capsys.readouterr().out)
    assert temporal["protocol"] == "temporal" and temporal["n_users"] == 20 and temporal["n_events"] == 20
    diff = temporal["id_sets"]["other"]["all_vs_ours"]["nll"]
    assert set(diff) == {"mean", "se", "n", "users"} and diff["n"] == 20 and diff["users"] == 20
    assert temporal["id_sets"]["other"]["all_mde_vs_ours"]["nll"] == pytest.approx(2 * diff["se"], abs=1e-6)
    longer = write_interactions(tmp_path / "longer", _sequential_events(users=20, length=16))
    assert main([*argv[:-5], str(longer), "--epochs", "1", "--history", "3", "--json", "--protocol",
                 "temporal"]) == EXIT_OK
    many = json.loads(capsys.readouterr().out)
    assert many["n_events"] == 20 * 3 and many["id_sets"]["other"]["all_vs_ours"]["recall@10"]["users"] == 20

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user_id": pa.array([1, 1, 1], pa.int64()), "item_id": pa.array([1, 2, 3], pa.int64())}),
                   bad)
    assert main(["--quiet", "evaluate-retrieval", "--ids", str(ours), "--interactions", str(bad)]) == EXIT_BAD_INPUT
    assert "timestamp" in capsys.readouterr().err
    no_dedup = tmp_path / "no_dedup.parquet"
    pq.write_table(pq.read_table(ours).drop_columns(["dedup"]), no_dedup)
    code = main(["--quiet", "evaluate-retrieval", "--ids", str(no_dedup), "--interactions", str(interactions)])
    assert code == EXIT_BAD_INPUT and "dedup" in capsys.readouterr().err
