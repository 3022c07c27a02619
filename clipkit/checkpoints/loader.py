"""`load`: a name or path -> (model, preprocess), built on the meta device, every key and
shape checked."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from clipkit.checkpoints.convert import _describe, infer_config
from clipkit.checkpoints.errors import CheckpointError, ModelNotFoundError
from clipkit.checkpoints.formats import load_state_dict
from clipkit.checkpoints.hub import _SHIPPED, OPENAI_URLS, _resolve
from clipkit.models.config import CLIPConfig, available_models, get_config

StateDict = dict[str, torch.Tensor]


class _SkipInit(TorchFunctionMode):
    """Turns the in-place initialisers into no-ops while a model is built on the meta device.

    Meta tensors hold no values, but `normal_` & co on them still run Python
    decompositions (and import ~800 modules the first time: about a second). The mode is
    thread-local, unlike patching `torch.nn.init`.
    """

    _SKIP = frozenset({
        torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.zero_, torch.Tensor.fill_,
        torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.zeros_, torch.nn.init.ones_,
        torch.nn.init.constant_, torch.nn.init.trunc_normal_, torch.nn.init.xavier_uniform_,
        torch.nn.init.xavier_normal_, torch.nn.init.kaiming_uniform_, torch.nn.init.kaiming_normal_,
        torch.nn.init.orthogonal_,
    })

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SKIP:
            return args[0] if args else next(iter(kwargs.values()))
        return func(*args, **kwargs)


def _check_keys(model: torch.nn.Module, sd: StateDict, where: str, described: str) -> StateDict:
    expected = model.state_dict()
    sd = dict(sd)
    for key, value in expected.items():  # BatchNorm counters are not weights
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros((), dtype=value.dtype)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        def listing(label: str, items: list[str]) -> str:
            more = f" (and {len(items) - 10} more)" if len(items) > 10 else ""
            return f"\n  {len(items)} {label}: {items[:10]}{more}"
        raise CheckpointError(
            f"{where} does not fit the architecture {described}:"
            + (listing("missing keys", missing) if missing else "")
            + (listing("unexpected keys", unexpected) if unexpected else "")
            + (listing("shape mismatches", wrong) if wrong else "")
            + "\nPass arch= (a registry name or a CLIPConfig) if the architecture was guessed wrong."
        )
    return sd


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", *,
         arch: str | CLIPConfig | None = None, trust_pickle: bool = False,
         cache_dir: str | os.PathLike | None = None, download: bool = True,
         dtype: torch.dtype | None = None):
    """Load a CLIP model and its preprocessing: `model, preprocess = clipkit.load("ViT-B/32")`.

    `name_or_path` is a registry name (shipped, cached or downloaded weights) or a path
    to any supported file or folder. The architecture comes from `arch`, else from the
    file (safetensors metadata, HF config.json), else from the weights' shapes. The
    model is returned in eval mode on `device`; on CPU, half-precision weights are run
    in float32 unless `dtype` says otherwise.
    """
    from clipkit.models import create_model
    from clipkit.transforms import image_transform

    name = os.fspath(name_or_path)
    path = Path(name)
    registry_name = None
    if not path.exists():
        known = set(available_models()) | set(OPENAI_URLS) | set(_SHIPPED)
        if name not in known:
            raise ModelNotFoundError(
                f"{name!r} is neither an existing file or folder nor a known model name "
                f"(known: {', '.join(sorted(known))})"
            )
        path = _resolve(name, cache_dir=cache_dir, download_ok=download)
        registry_name = name if name in available_models() else None
    sd, file_config = load_state_dict(path, trust_pickle=trust_pickle)

    if isinstance(arch, CLIPConfig):
        config, described = arch, f"{_describe(arch, None)} (given by arch=)"
    elif isinstance(arch, str):
        config, described = get_config(arch), f"{arch} (given by arch=)"
    elif file_config is not None:
        config, described = file_config, f"{_describe(file_config, None)} (from the file's config)"
    elif registry_name is not None:  # the weights of a named model: its registered architecture
        config, described = get_config(registry_name), f"{registry_name} (the requested model)"
    else:
        try:
            config, guessed = infer_config(sd)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except (ValueError, IndexError, KeyError, TypeError) as e:  # shapes no CLIP has
            raise CheckpointError(f"{path}: cannot infer a CLIP architecture from the weights' shapes "
                                  f"({type(e).__name__}: {e})") from e
        described = f"{_describe(config, guessed)} (guessed from the weights' shapes)"

    # Build on the meta device without initialisation (seconds saved on big models), check
    # every key and shape, then adopt the checkpoint's tensors as the parameters.
    with torch.device("meta"), _SkipInit():
        model = create_model(config)
    sd = _check_keys(model, sd, str(path), described)
    sd = {k: v if v.is_contiguous() else v.contiguous() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    del sd
    if dtype is None:
        if torch.device(device).type == "cpu":
            dtype = torch.float32  # half-precision kernels are slow or missing on CPU
        else:  # run as released (fp16 on GPU) in one dtype: the one most weights have
            sizes: dict[torch.dtype, int] = {}
            for p in model.parameters():
                sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
            dtype = max(sizes, key=sizes.get)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    preprocess = image_transform(config.vision.image_size, config.image_mean, config.image_std)
    return model, preprocess
