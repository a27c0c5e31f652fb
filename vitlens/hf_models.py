"""Loading Hugging Face transformers vision models: ``vitlens.load_model("hf:NAME")``.

``hf:NAME`` is a Hub repository id (``hf:google/vit-base-patch16-224``) or a local folder
written by ``save_pretrained`` (``hf:./my-vit``, works offline). The model class is the one
the folder's ``config.json`` records (``architectures``), else
``AutoModelForImageClassification``; preprocessing comes from the folder's image processor
(``preprocessor_config.json``), else from the family's processor defaults; class names
from ``config.id2label``. ``transformers`` is the optional extra ``vitlens[hf]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .errors import VitlensError, WeightsUnavailableError

#: Prefix of Hugging Face transformers model names.
HF_PREFIX = "hf:"
INSTALL_HINT = "pip install 'vitlens[hf]'"


def import_transformers():
    """``transformers``, or one line saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise VitlensError(f"hf: models need the transformers package, which is not installed; "
                           f"install it with: {INSTALL_HINT}") from None
    return transformers


def is_hf_model(model: object) -> bool:
    """``model`` is a transformers model (checked by its class's module, without importing transformers)."""
    return isinstance(model, nn.Module) and type(model).__module__.startswith("transformers.")


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: use the local cache only."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers depends on it
        return True
    return bool(constants.HF_HUB_OFFLINE)


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists() or ref.count("/") > 1


def _source(name: str) -> tuple[Any, str, bool, bool]:
    """``(transformers, source, offline, is_folder)`` for ``hf:NAME``: a folder is read offline;
    a Hub id uses the local cache only when the Hub cannot be reached."""
    from .models import _hub_reachable

    ref = name[len(HF_PREFIX):].strip()
    if not ref:
        raise VitlensError(f"{name!r} names no model; use `name=hf:<Hub repo id>` (e.g. "
                           f"hf:google/vit-base-patch16-224) or `name=hf:PATH` (a save_pretrained folder)")
    transformers = import_transformers()
    local = Path(ref).expanduser()
    if local.is_dir():
        return transformers, str(local), True, True
    if _looks_like_path(ref):
        raise VitlensError(f"{name!r}: no folder {str(local)!r}; `name=hf:PATH` takes a folder written by "
                           f"save_pretrained (with config.json), or use a Hub repository id")
    return transformers, ref, _hub_offline() or not _hub_reachable(), False


def _load_error(name: str, e: Exception, folder: bool, offline: bool) -> VitlensError:
    """The one-line error for a failed ``hf:NAME`` load (the offline message in the timm style)."""
    first = str(e).splitlines()[0][:200] if str(e) else ""
    if folder:
        return VitlensError(f"{name!r} could not be loaded from the folder ({type(e).__name__}: {first}); "
                            f"it must hold a save_pretrained model (config.json and weights)")
    if offline:
        return WeightsUnavailableError(
            f"'{name}' is not in the local Hugging Face cache and the Hub cannot be reached; connect to "
            f"the Hugging Face Hub once to cache it, pass a local folder written by save_pretrained as "
            f"`name=hf:PATH`, or use the bundled `name=demo` model")
    return WeightsUnavailableError(f"'{name}' could not be loaded ({type(e).__name__}: {first}); check "
                                   f"the repository id, or pass a save_pretrained folder as `name=hf:PATH`")


def load_hf(name: str, pretrained: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``hf:NAME`` in eval mode; returns ``(model, data_config)``.

    Args:
        name: ``"hf:<repo id or save_pretrained folder>"``.
        pretrained: load the weights (False: the configuration with random weights).
    """
    transformers, source, offline, folder = _source(name)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: restored below
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=offline)
        cls = _model_class(transformers, config)
        if pretrained:
            model = cls.from_pretrained(source, local_files_only=offline)
        else:
            model = cls._from_config(config)
    except (OSError, ValueError, EnvironmentError) as e:
        raise _load_error(name, e, folder, offline) from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError, KeyError):
        processor = None  # no preprocessor_config.json: the family's defaults
    model = model.eval()
    return model, data_config_hf(model, processor)


def skeleton_hf(name: str) -> nn.Module:
    """``hf:NAME``'s architecture on the ``meta`` device, from its ``config.json`` only (no weights).

    The caller enters ``torch.device("meta")``. Errors as :func:`load_hf` (missing extra,
    no such folder, the offline message).
    """
    transformers, source, offline, folder = _source(name)
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError, EnvironmentError) as e:
        raise _load_error(name, e, folder, offline) from None
    return _model_class(transformers, config)._from_config(config).eval()


def _model_class(transformers: Any, config: Any) -> Any:
    """The class ``config.json`` records, else the image-classification auto class."""
    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, str(arch), None)
        if cls is not None:
            return cls
    return transformers.AutoModelForImageClassification


def data_config_hf(model: nn.Module, processor: Any = None) -> dict[str, Any]:
    """vitlens' data config of a transformers model, from its image processor (or the family's defaults)."""
    from .capture.adapters import adapter_for

    import_transformers()
    adapter = adapter_for(model)
    data_config = getattr(adapter, "data_config", None)
    if data_config is None:  # pragma: no cover - every HF adapter has one
        raise VitlensError(f"{type(model).__name__}: no preprocessing known for this transformers model")
    return data_config(processor)


def class_names_hf(model: nn.Module) -> list[str] | None:
    """``config.id2label`` of a transformers classifier (None for placeholders ``LABEL_i``)."""
    from .capture.adapters import adapter_for

    names = getattr(adapter_for(model), "class_names", None)
    return names() if names is not None else None


def num_classes_hf(model: nn.Module) -> int | None:
    """Output classes of a transformers classifier (``config.num_labels``); None for other models."""
    if not is_hf_model(model):
        return None
    n = getattr(getattr(model, "config", None), "num_labels", None)
    return int(n) if isinstance(n, int) else None
