"""The serving index (rqvae.ids.serving): every answer equals a brute-force scan of the ID table, it saves and loads
(also memory-mapped), its Hugging Face `prefix_allowed_tokens_fn` and its dense GPU tables make a constrained
beam search emit only real items."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rqvae.errors import InputError
from rqvae.ids.serving import ServingIndex
from rqvae.quantize.metrics import assign_dedup
from rqvae.retrieval import IdTable, PrefixIndex, TokenLayout

SIZES = (3, 4, 5)


def crowded(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Few codes for many items (deep dedup, uneven branching, unused codes), item ids shuffled."""
    rng = np.random.default_rng(seed)
    codes = np.column_stack([rng.integers(0, 3, n), rng.integers(0, 3, n), rng.integers(0, 5, n) ** 2 % 5])
    ids = rng.permutation(50 * n)[:n].astype(np.int64) * 7 + 11
    return ids, codes.astype(np.int32), assign_dedup(ids, codes, SIZES)


@pytest.fixture(scope="module")
def table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return crowded()


@pytest.fixture(scope="module")
def index(table) -> ServingIndex:
    return ServingIndex.build(*table, SIZES)


def brute_allowed(full: np.ndarray, prefix: tuple[int, ...]) -> list[int]:
    hit = (full[:, : len(prefix)] == np.array(prefix, np.int64)).all(1)
    return sorted(set(full[hit, len(prefix)].tolist()))


def test_queries_equal_a_brute_force_scan(table, index):
    ids, codes, dedup = table
    full = np.column_stack([codes, dedup]).astype(np.int64)
    sizes = index.sizes
    assert sizes == (*SIZES, int(dedup.max()) + 1) and len(index) == len(ids)
    for depth in range(len(sizes)):  # every prefix of every length, existing or not (and some out of range)
        for prefix in itertools.product(*[range(-1, s + 1) for s in sizes[:depth]]):
            assert index.allowed(prefix).tolist() == brute_allowed(full, prefix), prefix
        combos = list(itertools.product(*[range(s) for s in sizes[:depth]]))
        prefixes = np.array(combos, np.int64).reshape(len(combos), depth)
        mask = index.allowed_mask(prefixes)
        for row, prefix in zip(mask, prefixes, strict=True):
            assert np.flatnonzero(row).tolist() == brute_allowed(full, tuple(prefix))
    assert np.array_equal(index.lookup(full), ids)
    assert np.array_equal(index.lookup(codes, dedup), ids)
    absent = np.array([[2, 3, 4, 99], [0, 0, 0, dedup.max() + 1], [5, 0, 0, 0]])
    assert index.lookup(absent).tolist() == [-1, -1, -1]
    got_codes, got_dedup, found = index.codes_of(np.r_[ids[::-1], -5, 12])
    assert found.tolist() == [True] * len(ids) + [False, False]
    assert np.array_equal(got_codes[: len(ids)], codes[::-1]) and np.array_equal(got_dedup[: len(ids)], dedup[::-1])


def test_the_trie_is_prefix_index_s_and_round_trips_through_files(table, index, tmp_path):
    reference = PrefixIndex(IdTable(*table, SIZES))
    for mine, theirs in zip(index.trie.keys + index.trie.codes, reference.keys + reference.codes, strict=True):
        assert np.array_equal(mine, theirs)
    assert np.array_equal(index.trie.items, reference.items)
    index.save(tmp_path / "serving_index")
    for mmap in (False, True):
        loaded = ServingIndex.load(tmp_path / "serving_index", mmap=mmap)
        assert loaded.sizes == index.sizes and len(loaded) == len(index)
        for a, b in zip(loaded.arrays().values(), index.arrays().values(), strict=True):
            assert np.array_equal(a, b)
        assert np.array_equal(loaded.lookup(np.column_stack(table[1:])), table[0])
    (tmp_path / "serving_index" / "meta.json").unlink()
    with pytest.raises(InputError, match="meta.json is missing"):
        ServingIndex.load(tmp_path / "serving_index")
    with pytest.raises(InputError, match="not unique"):
        ServingIndex.build(np.array([1, 2]), np.array([[0, 1], [0, 1]]), np.array([0, 0]))
    with pytest.raises(InputError, match="duplicate item ids"):
        ServingIndex.build(np.array([1, 1]), np.array([[0, 1], [0, 2]]), np.array([0, 0]))


def hf_beam_search(fn, prompts: list[list[int]], vocab: int, steps: int, beams: int, seed: int) -> list[list[list]]:
    """Beam search as Hugging Face runs it with prefix_allowed_tokens_fn: random logits, every token the
    function does not allow masked to -inf (PrefixConstrainedLogitsProcessor), top `beams` continuations kept."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for batch_id, prompt in enumerate(prompts):
        seqs, scores = [list(prompt)], torch.zeros(1)
        for _ in range(steps):
            logits = torch.randn(len(seqs), vocab, generator=gen).log_softmax(-1)
            mask = torch.full_like(logits, float("-inf"))
            for row, seq in enumerate(seqs):
                mask[row, fn(batch_id, torch.tensor(seq))] = 0
            total = (scores[:, None] + logits + mask).view(-1)
            top = total.topk(min(beams, int(torch.isfinite(total).sum()))).indices
            seqs = [seqs[int(i) // vocab] + [int(i) % vocab] for i in top]
            scores = total[top]
        out.append(seqs)
    return out


def test_hugging_face_prefix_fn_makes_beam_search_emit_only_real_items(table, index):
    ids, codes, dedup = table
    layout = index.layout
    assert layout == TokenLayout.of(IdTable(*table, SIZES))
    fn = index.prefix_allowed_tokens_fn()
    depth = len(index.sizes)
    offsets = layout.offsets[:-1]
    # encoder-decoder: the decoder starts with BOS, the ID follows, then PAD (our eos)
    for seqs in hf_beam_search(fn, [[layout.bos]] * 3, layout.vocab_size, depth + 1, beams=8, seed=1):
        tokens = np.array([s[1 : 1 + depth] for s in seqs]) - offsets
        items = index.lookup(tokens)
        assert (items >= 0).all() and len(set(items.tolist())) == len(items) == 8
        assert all(s[-1] == layout.pad for s in seqs)
    # decoder-only: a prompt of history tokens (BOS + one item), the ID after prompt_length tokens
    history = [layout.bos, *(np.r_[codes[0], dedup[0]] + offsets).tolist()]
    fn_prompt = index.prefix_allowed_tokens_fn(prompt_length=len(history))
    for seqs in hf_beam_search(fn_prompt, [history], layout.vocab_size, depth, beams=5, seed=2):
        assert (index.lookup(np.array([s[len(history):] for s in seqs]) - offsets) >= 0).all()
    # a vocabulary with 1000 text tokens first: custom offsets, BOS and EOS
    shifted = index.prefix_allowed_tokens_fn(offsets + 1000, bos=7, eos=2)
    assert shifted(0, [5, 7]) == (index.allowed([]) + 1000).tolist()
    full_id = (np.r_[codes[3], dedup[3]] + offsets + 1000).tolist()
    assert shifted(0, [7, *full_id]) == [2] and shifted(0, [7, 1]) == [2]  # done / impossible prefix: only eos
    with pytest.raises(ValueError, match="no BOS"):
        fn(0, [1, 2])
    with pytest.raises(ValueError, match="give eos"):
        index.prefix_allowed_tokens_fn(offsets + 1000)


def test_dense_tables_agree_with_the_sparse_trie_and_decode_real_items(table, index):
    dense = index.dense()
    nodes = np.array([0])
    for depth, size in enumerate(index.sizes):
        mask = dense.mask(depth, torch.from_numpy(nodes)).numpy()
        assert np.array_equal(mask, index.trie.allowed_mask(nodes, depth))
        assert np.array_equal(dense.masks[depth].numpy()[np.maximum(nodes, 0)] & (nodes >= 0)[:, None], mask)
        codes = np.tile(np.arange(size), len(nodes))
        parents = np.repeat(nodes, size)
        child = dense.advance(depth, torch.from_numpy(parents), torch.from_numpy(codes)).numpy()
        assert np.array_equal(child, index.trie.child(parents, depth, codes))
        nodes = np.r_[np.unique(child[child >= 0]), -1]  # every real node, plus a dead beam
    # greedy constrained decoding on the dense tables with random scores: every item it ends on is real
    gen = torch.Generator().manual_seed(0)
    beams = torch.zeros(64, dtype=torch.long)
    for depth in range(len(index.sizes)):
        logits = torch.randn(64, index.sizes[depth], generator=gen).masked_fill(~dense.mask(depth, beams), -torch.inf)
        beams = dense.advance(depth, beams, logits.argmax(1))
    assert (beams >= 0).all() and set(index.trie.item_of_leaf(beams.numpy())) <= set(table[0].tolist())
    need = index.dense_bytes()
    partial = index.dense(max_bytes=sum(need[:-1]))  # the dedup level left out: decoded sparsely instead
    assert partial.children[-1] is None and all(t is not None for t in partial.children[:-1])
    with pytest.raises(ValueError, match="allowed_mask"):
        partial.mask(len(need) - 1, torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="max_bytes"):
        index.dense(max_bytes=4)
