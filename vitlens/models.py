"""Load a model and its preprocessing: timm names, local checkpoints, the bundled demo, or a module.

``load_model`` returns the model in eval mode with timm's data config (input size,
mean/std, interpolation, crop) so preprocessing is always timm's own.
"""
from __future__ import annotations

import difflib
import json
import os
import pickle
import re
import socket
import zipfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from .errors import CheckpointError, VitlensError, WeightsUnavailableError
from .hf_models import HF_PREFIX, class_names_hf, data_config_hf, is_hf_model, load_hf, skeleton_hf

#: Name under which the bundled CIFAR-10 demo model loads.
DEMO_NAME = "demo"
#: The bundled demo models, name -> file stem in ``vitlens/assets`` (``.json`` config, ``.safetensors``
#: weights): the demo ViT and a small Swin, both trained on CIFAR-10 by ``scripts/train_demo.py``.
DEMOS = {DEMO_NAME: "demo_vit", "demo-swin": "demo_swin"}
#: The model ``vitlens attend`` uses when none is given.
DEFAULT_MODEL = "vit_base_patch16_224.augreg2_in21k_ft_in1k"

_DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


class LoadedModel(NamedTuple):
    """``model, data_config = vitlens.load_model(...)``."""

    model: nn.Module
    data_config: dict[str, Any]

    def __repr__(self) -> str:  # the model's own repr is one line per module
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        name = cfg.get("architecture") or type(self.model).__name__
        n = sum(p.numel() for p in self.model.parameters())
        return (f"LoadedModel(\n    model={type(self.model).__name__} {name!r} ({n / 1e6:.2f}M parameters, "
                f"{'training' if self.model.training else 'eval'} mode),\n    data_config={self.data_config!r},\n)")


class Preprocessed(NamedTuple):
    """A preprocessed image and where the model's input lies in the original image."""

    tensor: torch.Tensor
    #: ``(x0, y0, x1, y1)`` of the model input in original-image pixels (x1, y1 exclusive);
    #: may extend past the image for ``crop_mode="border"`` (padding).
    box: tuple[float, float, float, float]


# --------------------------------------------------------------------------- demo
def is_demo(name: Any) -> bool:
    """Whether ``name`` (a model name or a ``pretrained_cfg["architecture"]``) is a bundled demo model."""
    return isinstance(name, str) and name in DEMOS


def _demo_meta(name: str = DEMO_NAME) -> dict[str, Any]:
    stem = DEMOS[name]
    path = resources.files("vitlens.assets") / f"{stem}.json"
    if not path.is_file():
        raise VitlensError(f"the bundled demo model '{name}' is missing from this installation "
                           f"(vitlens/assets/{stem}.json); reinstall vitlens")
    return json.loads(path.read_text())


def _build_demo(with_weights: bool, name: str = DEMO_NAME) -> nn.Module:
    meta = _demo_meta(name)
    if meta.get("architecture") == "SwinTransformer":
        from timm.models.swin_transformer import SwinTransformer as Arch
    else:
        from timm.models.vision_transformer import VisionTransformer as Arch

    def tuples(d: dict[str, Any]) -> dict[str, Any]:  # JSON lists back to the tuples timm's configs use
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}

    model = Arch(**tuples(meta["model_config"]))
    model.pretrained_cfg = {
        "architecture": name, "tag": "cifar10", "num_classes": len(meta["labels"]),
        "label_names": list(meta["labels"]),
        **tuples({k: v for k, v in meta.items() if k in _DATA_CONFIG_KEYS}),
    }
    if with_weights:
        from safetensors.torch import load_file

        weights = resources.files("vitlens.assets") / f"{DEMOS[name]}.safetensors"
        with resources.as_file(weights) as p:
            model.load_state_dict(load_file(str(p)))
    return model


# --------------------------------------------------------------------- checkpoints
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a flat ``{name: tensor}`` dict, never unpickling objects.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A wrapper dict (PyTorch Lightning's
    ``{"state_dict": ..., "epoch": ...}``, ``{"model_state_dict": ...}``, ``{"model": ...}``,
    ``{"module": ...}``) is unwrapped and a ``module.`` prefix on every key (DataParallel,
    DDP) removed; other prefixes (Lightning's ``model.`` ...) are kept here and
    :func:`load_model` removes the one that makes the keys fit the model.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' does not exist or is not a file")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint '{p}' is not a readable safetensors file: {e}") from None
    else:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if not _looks_like_torch_file(p):
                raise CheckpointError(f"checkpoint '{p}' is not a torch checkpoint (neither a zip "
                                      f"archive nor a pickle); check the file (an HTML error page "
                                      f"from a failed download looks like this)") from None
            blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", _strip_ansi(str(e)))
            what = f" (it needs {blocked.group(1)})" if blocked else ""
            raise CheckpointError(
                f"checkpoint '{p}' contains pickled Python objects, not only tensors{what}; "
                f"vitlens refuses to unpickle it (that can run arbitrary code). Save "
                f"`model.state_dict()` with torch.save or safetensors instead") from None
        except Exception as e:  # torch raises RuntimeError/EOFError/zipfile errors on junk
            first = _strip_ansi(str(e)).splitlines()[0] if str(e) else ""
            raise CheckpointError(f"checkpoint '{p}' could not be read as a torch state_dict: "
                                  f"{type(e).__name__}: {first}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = f" with keys {', '.join(map(repr, list(sd)[:6]))}" if isinstance(sd, dict) and sd else ""
        raise CheckpointError(f"checkpoint '{p}' is not a state_dict of tensors (got {type(sd).__name__}{keys}); "
                              f"save `model.state_dict()`, or a dict holding it under one of "
                              f"{', '.join(map(repr, _WRAPPER_KEYS))}")
    if all(k.startswith("module.") for k in sd):  # DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


#: Keys under which training frameworks nest the state dict (Lightning: "state_dict").
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


def _prefix_fit(ckpt_keys: set[str], own_keys: set[str]) -> tuple[str, str]:
    """``(strip, add)``: the prefix the checkpoint's keys carry and the model's do not
    (``"model."`` for Lightning, ``"module."`` for DataParallel, ``"_orig_mod."`` for
    torch.compile, or several of them), or the reverse. ``("", "")`` when no single prefix
    explains the difference."""
    from collections import Counter

    if not ckpt_keys - own_keys:
        return "", ""
    strip: Counter[str] = Counter()
    add: Counter[str] = Counter()
    for k in ckpt_keys - own_keys:
        for i, ch in enumerate(k):
            if ch == "." and k[i + 1:] in own_keys:
                strip[k[: i + 1]] += 1
                break
    for k in own_keys - ckpt_keys:
        for i, ch in enumerate(k):
            if ch == "." and k[i + 1:] in ckpt_keys:
                add[k[: i + 1]] += 1
                break
    if strip and strip.most_common(1)[0][1] >= (add.most_common(1)[0][1] if add else 0):
        return strip.most_common(1)[0][0], ""
    if add:
        return "", add.most_common(1)[0][0]
    return "", ""


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _looks_like_torch_file(p: Path) -> bool:
    """A zip archive (torch.save's format) or a raw pickle (protocol byte 0x80)."""
    with open(p, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(p) or head[:1] == b"\x80"


def _classifier_key(model: nn.Module) -> str | None:
    try:
        head = model.get_classifier()
    except AttributeError:
        return None
    if isinstance(head, nn.Module):
        for name, mod in model.named_modules():
            if mod is head and hasattr(mod, "weight"):
                return f"{name}.weight"
    return None


def _load_checkpoint_into(model: nn.Module, path: str | os.PathLike, name: str) -> None:
    sd = read_state_dict(path)
    key = _classifier_key(model)
    own = {k: v.shape for k, v in model.state_dict().items()}
    strip, add = _prefix_fit(set(sd), set(own))
    if strip:  # Lightning's "model.", DataParallel's "module." ...: the keys under the prefix are the model
        sd = {k[len(strip):]: v for k, v in sd.items() if k.startswith(strip)}
    n_cls = None
    if key and key in sd and hasattr(model, "reset_classifier") and key in own:
        n_cls = int(sd[key].shape[0])
        if n_cls != own[key][0]:  # the head resized to the checkpoint's class count
            for k in (key, key[: -len("weight")] + "bias"):
                if k in own and k in sd:
                    own[k] = torch.Size([n_cls, *own[k][1:]])
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if own[k] != sd[k].shape)
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        if add and not shapes and all(add + k in own for k in sd):
            raise CheckpointError(
                f"checkpoint '{path}' fits model '{name}' except for a key prefix: the model's keys start with "
                f"{add!r} (e.g. {add + next(iter(sd))!r}) and the checkpoint's do not. Load it into the "
                f"sub-module `model.{add.rstrip('.')}`, or add the prefix to the checkpoint's keys")
        note = (f"its keys carry the prefix {strip!r} (removed, as Lightning and DataParallel add it); "
                f"even without it, " if strip else "")
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {show(missing)}")
        if unexpected:
            parts.append(f"not in the model: {show(unexpected)}")
        if shapes:
            parts.append("shape differs: " + show([f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k])}"
                                                   for k in shapes]))
        hint = (" The prefix is not the problem: check that `name` names the architecture the checkpoint "
                "was trained with" if strip else
                " Check that `name` names the architecture the checkpoint was trained with")
        raise CheckpointError(f"checkpoint '{path}' does not fit model '{name}': " + note + "; ".join(parts)
                              + "." + hint)
    if n_cls is not None and n_cls != getattr(model, "num_classes", n_cls):
        model.reset_classifier(n_cls)
    model.load_state_dict(sd)


# ------------------------------------------------------------------------- timm
@lru_cache(maxsize=1)
def _all_model_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def _check_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    arch = name.split(".", 1)[0]
    close = difflib.get_close_matches(arch, _all_model_names(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models() lists the names"
    raise VitlensError(f"unknown model '{name}' (not a timm model name and not one of the bundled {', '.join(DEMOS)}){hint}")


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on it
        return True
    return bool(constants.HF_HUB_OFFLINE)


def _cached_hub_weights(name: str) -> str | None:
    """Path of ``name``'s pretrained weights in the local Hugging Face cache, or None. No network.

    Looks for the files timm's Hub loader would download (``hf_hub_filename``, else
    ``model.safetensors`` then ``pytorch_model.bin``) with ``try_to_load_from_cache``.
    """
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["pytorch_model.bin"]
    for f in list(files):                     # timm prefers a .safetensors twin when one exists
        if f.endswith(".bin"):
            files.insert(files.index(f), "model.safetensors" if f == "pytorch_model.bin" else f[:-4] + ".safetensors")
    for f in files:
        path = try_to_load_from_cache(repo, f, revision=revision or None)
        if isinstance(path, str):
            return path
    return None


def _offline_overlay(name: str) -> dict[str, Any] | None:
    """When the Hub is unreachable, point timm at the cached weights file instead of ~50 s
    of download retries (``pretrained_cfg_overlay``: this call only, no global switch).

    Returns None when timm may go ahead as usual (Hub reachable, offline mode already on,
    or weights that do not come from the Hub); raises WeightsUnavailableError when the
    Hub is unreachable and the weights are not cached.
    """
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id or cfg.custom_load == "hf" or _hub_offline() or _hub_reachable():
        return None
    path = _cached_hub_weights(name)
    if path is None:
        raise WeightsUnavailableError(
            f"pretrained weights for '{name}' are not in the local Hugging Face cache and the Hub "
            f"({cfg.hf_hub_id}) cannot be reached; connect to the Hugging Face Hub once to cache them, "
            f"pass a local weights file as `checkpoint=PATH`, use `pretrained=False` (random weights), "
            f"or use the bundled `name={DEMO_NAME}` model")
    return {"file": path, "source": "", "custom_load": False}


def _create_timm(name: str, pretrained: bool) -> nn.Module:
    import timm

    _check_name(name)
    if not pretrained:
        return timm.create_model(name, pretrained=False)
    overlay = _offline_overlay(name)
    try:
        if overlay is not None:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
        return timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError, ValueError, ConnectionError) as e:
        raise WeightsUnavailableError(
            f"pretrained weights for '{name}' could not be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); connect to the Hugging Face Hub once to cache "
            f"them, pass a local weights file as `checkpoint=PATH`, use `pretrained=False` (random "
            f"weights), or use the bundled `name={DEMO_NAME}` model") from e


# ------------------------------------------------------------------------ public
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA if available else CPU; otherwise validated ``torch.device``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise VitlensError(f"invalid device {device!r}: {e}; use e.g. 'cpu', 'cuda', 'cuda:1'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VitlensError(f"device {device!r} requested but CUDA is not available here; use `device=cpu`")
    return dev


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """``(H, W)`` a fixed-size ViT accepts (``patch_embed.img_size``), or None if any size goes."""
    pe = getattr(model, "patch_embed", None)
    img_size = getattr(pe, "img_size", None)
    if img_size is None or getattr(model, "dynamic_img_size", False) or not getattr(pe, "strict_img_size", True):
        return None
    return (int(img_size[0]), int(img_size[1]))


def data_config_of(model: nn.Module) -> dict[str, Any]:
    """timm's data config (``resolve_data_config``) for ``model``.

    timm reads ``pretrained_cfg``, which keeps e.g. 224 for a model built with
    ``img_size=64``; a fixed-size model's own input size wins over it.
    """
    from timm.data import resolve_data_config

    if is_hf_model(model):  # transformers: the model's image processor (vitlens/hf_models.py)
        return data_config_hf(model)
    cfg = resolve_data_config({}, model=model)
    out = {k: cfg[k] for k in _DATA_CONFIG_KEYS if k in cfg}
    size = fixed_input_size(model)
    if size is not None:
        out["input_size"] = (int(out["input_size"][0]), *size)
    return out


def read_class_names(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """Class names from a list, a text file (one name per line) or a JSON file.

    JSON may hold a list of names, a ``{"0": "cat", "1": "dog", ...}`` index map (values may
    be ``[wnid, name]`` pairs as in ImageNet's class index, the last entry is the name), or
    either of those under ``"label_names"`` / ``"classes"`` (a timm pretrained_cfg).

    Raises:
        VitlensError: missing file, empty list, duplicate names, or an index map with gaps.
    """
    if not isinstance(source, (str, os.PathLike)):
        names = [str(n) for n in source]
        where = "classes"
    else:
        p = Path(source)
        where = f"class file '{p}'"
        if not p.is_file():
            raise VitlensError(f"{where} does not exist; give a .txt file with one class name per line "
                               f"(in output order) or a .json list")
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".json":
            try:
                data: Any = json.loads(text)
            except ValueError as e:
                raise VitlensError(f"{where} is not valid JSON ({e})") from None
            if isinstance(data, dict):
                for k in ("label_names", "classes", "class_names"):
                    if k in data:
                        data = data[k]
                        break
            if isinstance(data, dict):
                try:
                    idx = sorted((int(k), v) for k, v in data.items())
                except ValueError:
                    raise VitlensError(f"{where}: a JSON object must map class indices (\"0\", \"1\", ...) to "
                                       f"names, got keys like {next(iter(data))!r}") from None
                if [i for i, _ in idx] != list(range(len(idx))):
                    raise VitlensError(f"{where}: the class indices must be 0..{len(idx) - 1} without gaps")
                data = [v[-1] if isinstance(v, list) and v else v for _, v in idx]
            if not isinstance(data, list):
                raise VitlensError(f"{where}: expected a JSON list of class names or an index map, "
                                   f"got {type(data).__name__}")
            names = [str(n) for n in data]
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise VitlensError(f"{where} holds no class name")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise VitlensError(f"{where} names {dup[0]!r} more than once; class names must be unique")
    return names


#: Interpolations timm's eval transform knows.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


def _read_data_config(source: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """Preprocessing overrides from a dict or a timm-style pretrained_cfg JSON file, checked."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.is_file():
            raise VitlensError(f"preprocessing config '{p}' does not exist; give a JSON file with timm's "
                               f"pretrained_cfg keys ({', '.join(_DATA_CONFIG_KEYS)})")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            raise VitlensError(f"preprocessing config '{p}' is not valid JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("pretrained_cfg"), dict):  # a timm/HF config.json
            data = data["pretrained_cfg"]
        if not isinstance(data, dict):
            raise VitlensError(f"preprocessing config '{p}' must hold a JSON object")
        source = {k: v for k, v in data.items() if k in _DATA_CONFIG_KEYS}
        if not source:
            raise VitlensError(f"preprocessing config '{p}' has none of the keys {', '.join(_DATA_CONFIG_KEYS)}")
    out: dict[str, Any] = {}
    for k, v in dict(source).items():
        if v is None:
            continue
        if k not in _DATA_CONFIG_KEYS:
            raise VitlensError(f"unknown preprocessing key {k!r}; allowed: {', '.join(_DATA_CONFIG_KEYS)}")
        if k == "input_size":
            size = [int(x) for x in ([v, v] if isinstance(v, (int, float)) else v)]
            if len(size) == 2:
                size = [3, *size]
            if len(size) != 3 or min(size) < 1:
                raise VitlensError(f"input_size must be N, (H, W) or (3, H, W), got {v!r}")
            out[k] = tuple(size)
        elif k in ("mean", "std"):
            vals = tuple(float(x) for x in v)
            if len(vals) != 3 or (k == "std" and min(vals) <= 0):
                raise VitlensError(f"{k} must be three numbers (R, G, B){', all > 0' if k == 'std' else ''}, got {v!r}")
            out[k] = vals
        elif k == "crop_pct":
            if not 0 < float(v) <= 1:
                raise VitlensError(f"crop_pct must be in (0, 1] (1.0: no crop), got {v!r}")
            out[k] = float(v)
        elif k == "interpolation":
            if v not in INTERPOLATIONS:
                raise VitlensError(f"interpolation {v!r} is not one of {', '.join(INTERPOLATIONS)}")
            out[k] = v
        elif k == "crop_mode":
            if v not in ("center", "squash", "border"):
                raise VitlensError(f"crop_mode {v!r} is not one of center, squash, border")
            out[k] = v
    return out


def load_model(name: str | nn.Module, pretrained: bool = True, checkpoint: str | os.PathLike | None = None,
               device: str | torch.device | None = None, *,
               classes: str | os.PathLike | Sequence[str] | None = None,
               data_config: str | os.PathLike | dict[str, Any] | None = None) -> LoadedModel:
    """Load a model in eval mode together with its timm data config.

    Args:
        name: a timm model name, optionally with a pretrained tag
            (``"vit_base_patch16_224.augreg2_in21k_ft_in1k"``); ``"demo"`` for the bundled
            CIFAR-10 ViT, ``"demo-swin"`` for the bundled CIFAR-10 Swin; ``"hf:<repo id>"`` or ``"hf:PATH"`` (a ``save_pretrained`` folder)
            for a Hugging Face transformers model (extra ``vitlens[hf]``); or an
            ``nn.Module`` you already built (a transformers ``PreTrainedModel`` included:
            its preprocessing then comes from the family's image-processor defaults).
        pretrained: download/cache the timm pretrained weights (ignored with
            ``checkpoint`` and for ``"demo"``, which always has its weights).
        checkpoint: a local ``.safetensors`` file or torch state_dict (read with
            ``weights_only=True``); the class count is read from the head weights.
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
        classes: names of the model's outputs, in order: a list, a ``.txt`` file (one
            name per line) or a ``.json`` file (:func:`read_class_names`). Needed for a
            fine-tuned checkpoint with its own classes, so that predictions print names and
            targets/labels can be given by name. Must match the number of outputs.
        data_config: preprocessing overrides on top of timm's data config for the model:
            a dict with any of ``input_size`` (N, (H, W) or (3, H, W)), ``mean``, ``std``,
            ``crop_pct``, ``interpolation``, ``crop_mode``, or a timm-style pretrained_cfg
            JSON file holding them. The result is timm's ``resolve_data_config`` with these
            values, so ``make_transform`` and every command use it.

    Returns:
        ``LoadedModel(model, data_config)``; ``data_config`` has timm's keys
        ``input_size`` ``(3, H, W)``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
        ``crop_mode``.

    Raises:
        VitlensError: unknown name (with close matches), unusable checkpoint
            (:class:`~vitlens.errors.CheckpointError`), weights not obtainable offline
            (:class:`~vitlens.errors.WeightsUnavailableError`), bad device.
    """
    dev = resolve_device(device)
    if isinstance(name, str) and name.startswith(HF_PREFIX) or is_hf_model(name):
        return _load_transformers(name, pretrained, checkpoint, dev)
    if isinstance(name, nn.Module):
        model = name
        if checkpoint is not None:
            _load_checkpoint_into(model, checkpoint, type(model).__name__)
    elif isinstance(name, str):
        if is_demo(name):
            model = _build_demo(with_weights=checkpoint is None, name=name)
        else:
            model = _create_timm(name, pretrained=pretrained and checkpoint is None)
        if checkpoint is not None:
            _load_checkpoint_into(model, checkpoint, name)
    else:
        raise TypeError(f"name must be a timm model name or an nn.Module, got {type(name).__name__}")
    model = model.to(dev).eval()
    if classes is not None or data_config is not None:
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})  # a copy: timm shares the default dict
        if classes is not None:
            names = read_class_names(classes)
            n_out = getattr(model, "num_classes", None)
            if n_out is not None and int(n_out) != len(names):
                raise VitlensError(f"{len(names)} class names for a model with {n_out} outputs; give one name per "
                                   f"output, in output order")
            cfg["label_names"] = names
        if data_config is not None:
            override = _read_data_config(data_config)
            fixed = fixed_input_size(model)
            if "input_size" in override and fixed is not None and tuple(override["input_size"][1:]) != fixed:
                raise VitlensError(f"input size {override['input_size'][1]}x{override['input_size'][2]}: this model "
                                   f"accepts only {fixed[0]}x{fixed[1]} inputs (its patch_embed.img_size); pick the "
                                   f"architecture trained at that size (e.g. a *_384 timm name) or build the model "
                                   f"with dynamic_img_size=True")
            cfg.update(override)
        model.pretrained_cfg = cfg
    return LoadedModel(model, data_config_of(model))


def build_skeleton(name: str) -> nn.Module:
    """The architecture ``name`` on PyTorch's ``meta`` device: no weights, no memory, no download.

    Lets a caller check layer and head indices against the model before loading its
    weights (``vitlens attend --layer 30`` fails in a second instead of after the load).

    Raises:
        VitlensError: unknown model name (with close matches); for ``hf:NAME`` the errors of
            :func:`load_model` (missing extra, no such folder, Hub unreachable).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a timm model name, {DEMO_NAME!r} or 'hf:NAME', got {type(name).__name__}")
    with torch.device("meta"):
        if name.startswith(HF_PREFIX):  # transformers: the class its config.json names
            return skeleton_hf(name)
        if is_demo(name):
            return _build_demo(with_weights=False, name=name)
        import timm

        _check_name(name)
        return timm.create_model(name, pretrained=False)


def class_names(model: nn.Module) -> list[str] | None:
    """Human-readable class names of ``model``'s outputs, when known.

    The demo model's CIFAR-10 labels, ImageNet names for timm ImageNet-1k/22k heads
    (from timm's bundled ImageNet info, offline), or a transformers model's
    ``config.id2label``. None otherwise.
    """
    if is_hf_model(model):
        return class_names_hf(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    n = getattr(model, "num_classes", None)
    if cfg.get("label_names"):  # e.g. the demo's CIFAR-10 names; not for a checkpoint with another head
        return list(cfg["label_names"]) if n is None or len(cfg["label_names"]) == n else None
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            if info.num_classes() == n:
                return [info.index_to_description(i).split(",")[0] for i in range(n)]
    except Exception:  # names are a nicety; never fail a run over them
        return None
    return None


# ------------------------------------------------------------ transformers (hf:)
def _load_transformers(name: str | nn.Module, pretrained: bool, checkpoint: str | os.PathLike | None,
                       device: torch.device) -> LoadedModel:
    """``hf:NAME`` or an already-built transformers model (see vitlens/hf_models.py)."""
    label = name if isinstance(name, str) else type(name).__name__
    if checkpoint is not None:
        raise VitlensError(f"`checkpoint=PATH` is for timm models; a transformers model ({label}) loads its "
                           f"weights with it: pass the folder written by save_pretrained as `name=hf:PATH`")
    if isinstance(name, str):
        model, cfg = load_hf(name, pretrained=pretrained)
    else:
        model, cfg = name.eval(), data_config_hf(name)
    return LoadedModel(model.to(device).eval(), cfg)


def make_transform(data_config: dict[str, Any]):
    """timm's eval transform for ``data_config`` (PIL image -> normalised tensor).

    Keys other than timm's data-config keys (input_size, interpolation, mean, std,
    crop_pct, crop_mode) are ignored.
    """
    from timm.data import create_transform

    return create_transform(**{k: v for k, v in data_config.items() if k in _DATA_CONFIG_KEYS},
                            is_training=False)


def input_box(image_size: tuple[int, int], data_config: dict[str, Any]) -> tuple[float, float, float, float]:
    """Where timm's eval transform takes its input from, in original-image pixels.

    Mirrors ``timm.data.transforms_imagenet_eval``: the image is resized
    (shortest edge for ``crop_mode="center"``, both edges for ``"squash"``, longest edge
    for ``"border"``) to ``input_size / crop_pct``, then centre-cropped to ``input_size``.

    Args:
        image_size: original ``(W, H)`` as PIL reports it.
        data_config: timm data config.

    Returns:
        ``(x0, y0, x1, y1)``, floats, x1/y1 exclusive.
    """
    w, h = image_size
    th, tw = data_config["input_size"][-2:]
    pct = data_config.get("crop_pct") or 0.875
    mode = data_config.get("crop_mode") or "center"
    sh, sw = int(th / pct), int(tw / pct)  # math.floor for positive numbers
    if mode == "squash":  # transforms.Resize((sh, sw))
        rh, rw = sh, sw
    elif mode == "center" and sh == sw:  # transforms.Resize(int): shortest edge, long edge truncated
        if w <= h:
            rw, rh = sh, int(sh * h / w)
        else:
            rh, rw = sh, int(sh * w / h)
    else:  # timm ResizeKeepRatio: longest edge for "border", shortest for "center"
        ratio_h, ratio_w = h / sh, w / sw
        r = max(ratio_h, ratio_w) if mode == "border" else min(ratio_h, ratio_w)
        rh, rw = round(h / r), round(w / r)
    fy, fx = rh / h, rw / w
    if mode == "border":  # CenterCropOrPad: centred, possibly padded (box exceeds the image)
        top, left = (rh - th) / 2.0, (rw - tw) / 2.0
    else:  # torchvision CenterCrop offsets
        top, left = int(round((rh - th) / 2.0)), int(round((rw - tw) / 2.0))
    return (left / fx, top / fy, (left + tw) / fx, (top + th) / fy)


def preprocess(image, data_config: dict[str, Any]) -> Preprocessed:
    """Apply timm's eval transform to a PIL RGB image; also return the input box."""
    return Preprocessed(make_transform(data_config)(image), input_box(image.size, data_config))
