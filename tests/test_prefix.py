"""Shared-prefix text encoding equals encoding every prompt whole at the full context."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clipkit
from clipkit.models import create_model
from clipkit.models.layers import PrefixKV, ResidualAttentionBlock
from clipkit.models.prefix import _Tree, encode_text_shared_prefix, supports_shared_prefix
from clipkit.zeroshot import build_head, class_embeddings, encode_prompts

PROMPTS = [
    "a photo of a cat.", "a photo of a dog.", "a photo of a cat.",  # a duplicate
    "a bad photo of a cat.", "a bad photo of the hot air balloon.", "cat", "a",
    "a photo of a", "a photo of a hot air balloon flying over the sea at dawn, seen from a cliff.",
    "itap of my cat.", "a photo of the number: \"7\".", "a photo of the number: \"1\".",
]


def _full_context(model, ids):
    """The reference: every prompt at the full context length, one call."""
    with torch.inference_mode():
        return model.encode_text(ids)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_equals_every_prompt_at_full_context(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    ids = clipkit.tokenize(PROMPTS, context_length=model.context_length)
    ref = _full_context(model, ids)
    # default settings, then tiny batches and a tiny pool (many chunks that each
    # recompute their shared prefixes)
    for kwargs in ({}, {"batch_tokens": 3, "max_pool_bytes": 1}, {"batch_tokens": 5, "max_pool_bytes": 20_000}):
        got = encode_text_shared_prefix(model, ids, **kwargs)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[0], got[2])  # duplicated prompts: one encoding, copied


def test_random_ids_with_prompts_that_are_prefixes_of_others():
    # Rows read out at their argmax; with random ids one row's read-out sequence can be a
    # proper prefix of another's (it ends where the other goes on): a node that is both an
    # output and a parent.
    torch.manual_seed(1)
    model = create_model("tiny-vit").eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 40, (300, 14), generator=g)
    ids[:, 0] = 3
    ids[:150, 1:5] = 7  # long shared prefix for half the rows
    ids[100:, 5] = torch.randint(40, 48, (200,), generator=g)  # a larger id: later read-out
    ids[::4, 6:] = 0
    ids[::5, 3] = 60  # read out at position 3: a prefix of rows that share ids[:, :4]
    ids[1::5, :4] = ids[::5, :4]
    ids[1::5, 8] = 61
    ref = _full_context(model, ids)
    got = encode_text_shared_prefix(model, ids, batch_tokens=16, max_pool_bytes=30_000)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_the_tree_encodes_each_distinct_prefix_once():
    seqs = sorted({(1, 2, 3, 9), (1, 2, 4, 9), (1, 2, 4, 5, 9), (1, 7, 9), (8, 9), (1, 2)})
    tree = _Tree(seqs, list(range(len(seqs))))
    prefixes = {s[:j] for s in seqs for j in range(1, len(s) + 1)}
    assert sum(len(t) for t in tree.tokens) == len(prefixes)  # every trie node exactly once
    outputs = sorted(o for o in tree.out if o >= 0)
    assert outputs == list(range(len(seqs)))  # every sequence read out once
    # keys/values are kept only for segments that have children
    parents = {p for p in tree.parent if p >= 0}
    assert {s for s, slot in enumerate(tree.slot) if slot >= 0} == parents


def test_prefix_kv_continuation_equals_one_causal_pass():
    torch.manual_seed(3)
    block = ResidualAttentionBlock(16, 2).eval()
    x = torch.randn(2, 7, 16)
    with torch.inference_mode():
        full = block(x, is_causal=True)
        first = PrefixKV(x.new_empty(2, 2, 0, 8), x.new_empty(2, 2, 0, 8))
        head = block(x[:, :4], attn_mask=torch.ones(4, 4, dtype=torch.bool).tril(), cache=first)
        mask = torch.ones(3, 7, dtype=torch.bool).tril(diagonal=4)  # queries 4..6 see keys 0..own
        tail = block(x[:, 4:], attn_mask=mask, cache=PrefixKV(first.new_k, first.new_v))
    torch.testing.assert_close(torch.cat([head, tail], 1), full, atol=1e-6, rtol=1e-6)


def test_heads_on_the_shipped_model_equal_the_full_context_path():
    model, _ = clipkit.load("clipkit-synth")
    names = ["red circle", "blue square", "green triangle", "the number 7", "a yellow star", "red circles"]
    templates = ["a photo of a {}.", "a drawing of a {}.", "a photo of the number: \"{}\".", "{}",
                 "a photo of a {}.", "a bad photo of the {}, drawn small."]
    slow = class_embeddings(model, names, templates, fast=False)
    for fast in (True, "prefix", "length"):
        torch.testing.assert_close(class_embeddings(model, names, templates, fast=fast), slow,
                                   atol=1e-5, rtol=1e-5)
    head = build_head(model, names, templates, cache=False)  # the default path
    ref = build_head(model, names, templates, cache=False, fast=False)
    torch.testing.assert_close(head.weight, ref.weight, atol=1e-5, rtol=1e-5)


class _TextOnly(torch.nn.Module):
    """A model with the encode_text API but no clipkit text tower to run in pieces."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def encode_text(self, ids, normalize=False):
        return self.inner.encode_text(ids, normalize=normalize)


def test_models_without_a_clipkit_text_tower_fall_back_to_whole_prompts():
    torch.manual_seed(4)
    model = create_model("tiny-vit").eval()
    wrapped = _TextOnly(model)
    assert supports_shared_prefix(model) and not supports_shared_prefix(wrapped)
    got = encode_prompts(wrapped, PROMPTS)
    ref = F.normalize(_full_context(model, clipkit.tokenize(PROMPTS)), dim=-1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="CLIP model"):
        encode_text_shared_prefix(wrapped, clipkit.tokenize(PROMPTS))
    with pytest.raises(ValueError, match="fast must be"):
        encode_prompts(model, PROMPTS, fast="quick")


def test_keys_values_are_the_ones_the_block_attends_with():
    torch.manual_seed(5)
    block = ResidualAttentionBlock(16, 2).eval()
    x = torch.randn(3, 5, 16)
    with torch.inference_mode():
        seen = PrefixKV(x.new_empty(3, 2, 0, 8), x.new_empty(3, 2, 0, 8))
        block(x, attn_mask=torch.ones(5, 5, dtype=torch.bool).tril(), cache=seen)
        k, v = block.keys_values(x)
    torch.testing.assert_close(k, seen.new_k)
    torch.testing.assert_close(v, seen.new_v)


def test_head_flops_counts_the_tree_and_the_last_layer_by_hand():
    """benchmarks/head_flops.py's count on a case worked by hand: width 1, MLP 1, one layer,
    context 2; prompts (5, 6) and (5, 7) share the node (5). A block costs qkv 6 + out 2 +
    MLP 4 = 12 FLOPs, attention 4 per key. 77-token path: 2 prompts x 2 positions x (12 + 8).
    Tree (the one layer is the last): node (5) reads nothing out, so only its keys and
    values (4); (5, 6) and (5, 7) run the block with 2 keys (12 + 8 each). As implemented,
    the radix tree's segment (5) runs the whole block at its last (only) position: + 12 + 4 - 4."""
    from benchmarks.head_flops import head_flops

    f = head_flops([[5, 6], [5, 7]], [2, 2], width=1, layers=1, mlp=1, context=2)
    assert (f["nodes"], f["distinct"], f["token_pairs"]) == (3, 2, 3)
    assert f["ref"] == 2 * 2 * (12 + 8)
    assert f["tree"] == 4 + 2 * (12 + 8)
    assert f["segments"] == 3 and f["implemented"] == f["tree"] + (12 + 4) - 4
    # two layers: the first runs every node in full with attention over its depth
    g = head_flops([[5, 6], [5, 7]], [2, 2], width=1, layers=2, mlp=1, context=2)
    assert g["tree"] == (12 + 4) + 2 * (12 + 8) + f["tree"]
    assert g["ref"] == 2 * f["ref"]
