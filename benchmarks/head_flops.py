"""How fast can an exact zero-shot head get? The floating-point work of the two ways.

Counts the multiply-adds (as 2 FLOPs each) of the text tower's matrix products for the
ImageNet head (1000 classes x 80 templates), without timing anything:

* the 77-token path: every prompt at 77 positions, every layer, attention over 77 keys;
* the shared-prefix path, ideally: each node of the prefix tree once (a node = a distinct
  token prefix), attention over the node's own depth; in the last layer only the read-out
  (end-of-text) nodes run the whole block, the others need only their keys and values;
* the same as `clipkit.models.prefix` runs it (the last layer's block also on the last
  position of every segment of the radix tree; attention over ragged prefixes' padding
  not counted).

Their ratio is the speed-up the shared-prefix path would reach if both ran their matrix
products equally fast. `--times SLOW PREFIX` (seconds for the full head on each path, e.g.
from `results/head.md`) also prints the GFLOP/s each achieved.

    .venv/bin/python benchmarks/head_flops.py --times 2331 133.7
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def head_flops(ids_rows: list[list[int]], lengths: list[int], width: int, layers: int, mlp: int,
               context: int = 77) -> dict:
    """FLOPs of both paths for prompts given as token rows cut at their lengths."""
    seqs = {tuple(r[:n]) for r, n in zip(ids_rows, lengths)}
    nodes = {s[:j] for s in seqs for j in range(1, len(s) + 1)}
    C = width
    qkv = 2 * 3 * C * C
    kv = 2 * 2 * C * C  # keys and values only: 2/3 of the qkv projection
    block = qkv + 2 * C * C + 2 * 2 * C * mlp  # qkv, out projection, the MLP's two layers

    def attn(keys: int) -> int:  # q.k and a.v for one query position
        return 2 * 2 * keys * C

    ref = len(lengths) * context * layers * (block + attn(context))
    tree = sum((layers - 1) * (block + attn(len(n))) for n in nodes)
    # the last layer: read-out nodes run the block, the others only give keys and values
    tree += sum(block + attn(len(n)) if n in seqs else kv for n in nodes)
    # As `clipkit.models.prefix` runs it: the last layer runs the block on the last position
    # of every segment of the radix tree (for the segments that read nothing out, that is
    # work beyond the ideal). Not counted: attention over the padding of ragged prefixes.
    from clipkit.models.prefix import _Tree

    ordered = sorted(seqs)
    t = _Tree(ordered, list(range(len(ordered))))
    extra = sum(block + attn(t.start[s] + len(t.tokens[s])) - kv
                for s in range(len(t.parent)) if t.out[s] < 0)
    # the first layer's LayerNorm + qkv depend only on (token, position): an upper bound for sharing them too
    pairs = len({(n[-1], len(n)) for n in nodes})
    return {"prompts": len(lengths), "distinct": len(seqs), "nodes": len(nodes), "token_pairs": pairs,
            "segments": len(t.parent), "ref": ref, "tree": tree, "implemented": tree + extra,
            "tree_layer0_shared": tree - (len(nodes) - pairs) * qkv}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B/32")
    p.add_argument("--times", nargs=2, type=float, metavar=("SLOW_S", "PREFIX_S"),
                   help="measured seconds of the full head: 77-token path, shared-prefix path")
    args = p.parse_args(argv)

    from clipkit.models import create_model
    from clipkit.templates import load_classnames, load_templates
    from clipkit.tokenizer import get_tokenizer

    model = create_model(args.model)
    blocks = model.transformer.resblocks
    width = model.ln_final.normalized_shape[0]
    mlp = blocks[0].mlp.c_fc.weight.shape[0]
    names, templates = load_classnames("imagenet"), load_templates("imagenet")
    ids = get_tokenizer()([t.format(c) for c in names for t in templates])
    lengths = (ids.argmax(1) + 1).tolist()
    f = head_flops(ids.tolist(), lengths, width, len(blocks), mlp, ids.shape[1])
    print(f"{args.model} text tower: width {width}, {len(blocks)} layers, MLP {mlp}")
    print(f"{f['prompts']:,} prompts ({f['distinct']:,} distinct); prefix tree {f['nodes']:,} nodes; "
          f"77-token positions / tree nodes = {f['prompts'] * ids.shape[1] / f['nodes']:.2f}")
    print(f"FLOPs: 77-token path {f['ref'] / 1e12:.2f} T, shared-prefix path {f['tree'] / 1e12:.2f} T: "
          f"ratio x{f['ref'] / f['tree']:.2f} (the speed-up at equal FLOP/s)")
    print(f"sharing the first layer's qkv over the {f['token_pairs']:,} distinct (token, position) pairs too: "
          f"x{f['ref'] / f['tree_layer0_shared']:.2f}")
    print(f"as clipkit.models.prefix runs it ({f['segments']:,} segments; the last layer's block on every "
          f"segment's last position): {f['implemented'] / 1e12:.2f} T, x{f['ref'] / f['implemented']:.2f}")
    if args.times:
        slow, fast = args.times
        print(f"measured: 77-token path {f['ref'] / slow / 1e9:.0f} GFLOP/s, shared-prefix path "
              f"{f['implemented'] / fast / 1e9:.0f} GFLOP/s as run "
              f"({f['implemented'] / fast / (f['ref'] / slow):.0%} of the other's rate); "
              f"speed-up x{slow / fast:.1f} = {slow / fast / (f['ref'] / f['tree']):.0%} of the ideal FLOP ratio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
