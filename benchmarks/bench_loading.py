"""Load time of a ViT-B/32 checkpoint (random weights) in every format clipkit reads.

Writes one ViT-B/32-shaped model in five formats into a temporary folder, then times
`clipkit.load(path)` on each (median of `--repeats` runs, warm page cache, architecture
inferred from the file) next to the usual way of loading that format. Each timing is
reported twice: the load call alone, and the load plus reading every weight once
(memory-mapped loaders defer the page faults to the first forward):

| format | as written here | the usual way, timed for comparison |
| --- | --- | --- |
| OpenAI TorchScript archive | traced module with OpenAI key names, fp16 weights as released | `torch.jit.load` + `state_dict()` + build the model + `load_state_dict` (openai/CLIP with `jit=False`) |
| plain state dict `.pt` | `torch.save(model.state_dict())`, fp32 | `torch.load(weights_only=True)` + build + `load_state_dict` |
| open_clip checkpoint | `{"epoch", "state_dict": {"module." + key}}`, fp32 | same as plain, after unwrapping |
| Hugging Face folder | `transformers.CLIPModel.save_pretrained` (safetensors), fp32 | `transformers.CLIPModel.from_pretrained` |
| clipkit safetensors | `clipkit.save(model)`, fp32, config in metadata | `safetensors.torch.load_file` + build + `load_state_dict` |

"build the model" is `create_model("ViT-B/32")` with its random initialisation, which is
what the reference loaders do; clipkit builds on the meta device and adopts the loaded
tensors instead. Run from the repository root (transformers needed for the HF folder):

    .venv/bin/python benchmarks/bench_loading.py [--repeats 3] [--out benchmarks/results/loading.md]
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import clipkit  # noqa: E402
from benchmarks._machine import cpu_name  # noqa: E402
from benchmarks._released import Released as _Released  # noqa: E402 - the released archives' layout
from clipkit.models import create_model  # noqa: E402

ARCH = "ViT-B/32"


def write_formats(folder: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    model = create_model(ARCH).eval()
    sd = model.state_dict()
    paths = {}

    paths["OpenAI TorchScript (fp16)"] = folder / "ViT-B-32.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a copy: tracing shares the modules, and .half() below must not touch `model`
        traced = torch.jit.trace(_Released(copy.deepcopy(model)), torch.randn(1, 3, 224, 224), check_trace=False)
    traced.half()  # the released archives store fp16 weights
    traced.save(str(paths["OpenAI TorchScript (fp16)"]))
    del traced

    paths["plain state dict .pt"] = folder / "plain.pt"
    torch.save(sd, paths["plain state dict .pt"])

    paths["open_clip checkpoint"] = folder / "open_clip.pt"
    torch.save({"epoch": 32, "name": "bench", "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               paths["open_clip checkpoint"])

    try:
        import transformers

        hf = transformers.CLIPModel(transformers.CLIPConfig())  # defaults are ViT-B/32's shapes
        paths["Hugging Face folder (safetensors)"] = folder / "hf"
        hf.save_pretrained(paths["Hugging Face folder (safetensors)"])
        del hf
    except ImportError:
        print("transformers not installed: skipping the Hugging Face folder", file=sys.stderr)

    paths["clipkit safetensors"] = clipkit.save(model, folder / "clipkit.safetensors")
    return paths


def _build_and_load(sd):
    model = create_model(ARCH)
    model.load_state_dict(sd, strict=True)
    return model.float().eval()


def reference_loader(label: str, path: Path):
    if label.startswith("OpenAI"):
        def run():
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in ("input_resolution", "context_length", "vocab_size"):
                sd.pop(key, None)
            return _build_and_load(sd)
        return "`torch.jit.load` + build + `load_state_dict`", run
    if label.startswith("plain"):
        return "`torch.load(weights_only=True)` + build + `load_state_dict`", \
            lambda: _build_and_load(torch.load(path, map_location="cpu", weights_only=True))
    if label.startswith("open_clip"):
        def run():
            sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            return _build_and_load({k.removeprefix("module."): v for k, v in sd.items()})
        return "`torch.load(weights_only=True)` + unwrap + build + `load_state_dict`", run
    if label.startswith("Hugging Face"):
        import transformers
        return "`transformers.CLIPModel.from_pretrained`", \
            lambda: transformers.CLIPModel.from_pretrained(path).eval()
    from safetensors.torch import load_file
    return "`safetensors.torch.load_file` + build + `load_state_dict`", lambda: _build_and_load(load_file(str(path)))


def _touch(model) -> None:
    """Read every weight once. Memory-mapped loaders (safetensors, `torch.load(mmap=True)`)
    return before the bytes are read; the page faults come at the first forward. Timing
    load + touch makes lazy and eager loaders comparable."""
    with torch.no_grad():
        for p in model.parameters():
            p.sum()


def median_times(load, repeats: int) -> tuple[float, float]:
    """Median seconds of (load, load + touching every weight) over `repeats` runs."""
    loads, totals = [], []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        model = load()
        loaded = time.perf_counter()
        _touch(model)
        loads.append(loaded - start)
        totals.append(time.perf_counter() - start)
        del model
    return statistics.median(loads), statistics.median(totals)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "loading.md")
    args = parser.parse_args(argv)

    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_formats(Path(tmp))
        for label, path in paths.items():
            clipkit.load(path)  # warm-up: page cache, lazy imports
            ours = median_times(lambda: clipkit.load(path)[0], args.repeats)
            ref_label, ref_fn = reference_loader(label, path)
            ref_fn()
            ref = median_times(ref_fn, args.repeats)
            rows.append((label, _size(path), ours, ref_label, ref))
            print(f"{label:36s} {_size(path) / 2**20:5.0f} MiB  clipkit {ours[0]:6.3f} s / {ours[1]:6.3f} s   "
                  f"reference {ref[0]:6.3f} s / {ref[1]:6.3f} s", flush=True)

    command = "python benchmarks/bench_loading.py" + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    lines = [
        "# Checkpoint load time (ViT-B/32, random weights)",
        "",
        f"Command: `{command}` (from the repository root)",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}. Median of {args.repeats} runs each, after one warm-up (files in the page cache). "
        f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run "
        f"(other jobs shared the cores: compare within a row, not across machines).",
        "",
        "`clipkit.load(path)` returns the model (eval mode, fp32 on CPU) and its preprocessing; the "
        "architecture is inferred from the file. The reference way is the usual way to load that "
        "format (see the script's docstring). Each cell is `load` / `load + read every weight once`: "
        "memory-mapped loaders return before the bytes are read and pay the page faults at the "
        "first forward, so the second figure is the comparable one.",
        "",
        "| format | size | `clipkit.load` | reference way | reference |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for label, size, ours, ref_label, ref in rows:
        lines.append(f"| {label} | {size / 2**20:.0f} MiB | {ours[0]:.2f} s / {ours[1]:.2f} s | {ref_label} "
                     f"| {ref[0]:.2f} s / {ref[1]:.2f} s |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
