"""Shape-vs-texture bias on texture–shape cue-conflict stimuli (Geirhos et al. 2019).

Geirhos, Rubisch, Michaelis, Bethge, Wichmann, Brendel, "ImageNet-trained CNNs are biased
towards texture; increasing shape bias improves accuracy and robustness", ICLR 2019,
https://arxiv.org/abs/1811.12231. The protocol is the one of bethgelab/model-vs-human
(@79ed7cd), written down step by step in ``shared/data/cue-conflict/SOURCE.md``; the
step numbers below refer to that file.

Three parts, each in its own place:

- the stimuli (folder layout, labels from the file names, decoding):
  :mod:`vitlens.data.cue_conflict`;
- the protocol, a pure function of the softmax probabilities and the stimulus labels:
  :func:`decide` and :func:`tally` here;
- where the CLS attention falls (high- or low-texture patches):
  :mod:`vitlens.analysis.texture_attention`.

:func:`shape_bias` puts them together: it reads the stimuli, runs the model once per
batch (recording the CLS attention in the same forward pass), and applies the protocol.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .._util import describe, html_table, jsonable as _jsonable, model_device, resolve_model
from ..data.cue_conflict import (CUE_CONFLICT_CATEGORIES, SkippedFile, Stimulus, scan_stimuli, stimulus_batches,
                                 texture_label, unreadable)
from ..capture import logits_of, require_logits
from ..errors import VitlensError
from .gradients import preserved_model_state
from .texture_attention import (TextureAttention, summarise_texture_attention, texture_attention_unavailable,
                                texture_shares)

__all__ = [
    "ShapeBiasResult", "ImageDecision", "SkippedFile", "TextureAttention", "CategoryMapping",
    "shape_bias", "decide", "tally", "load_mapping", "default_mapping_name", "texture_label",
    "CUE_CONFLICT_CATEGORIES", "BUILTIN_MAPPINGS", "CIFAR10_LABELS", "HUMAN_SHAPE_BIAS",
]

#: Built-in mapping name -> JSON file in ``vitlens/assets`` (attribution in ``MAPPINGS.md``).
BUILTIN_MAPPINGS: dict[str, str] = {
    "imagenet16": "imagenet16_categories.json",
    "cifar10": "cifar10_cue_conflict.json",
}
#: CIFAR-10 label order, the demo model's outputs.
CIFAR10_LABELS: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                   "horse", "ship", "truck")
#: Human shape bias on the cue-conflict stimuli: Geirhos et al. 2019 report ≈ 0.96
#: (10 subjects pooled: 9236/9634 = 0.959, per SOURCE.md).
HUMAN_SHAPE_BIAS = 0.96

#: Outcome of one image, in :attr:`ImageDecision.outcome`.
OUTCOMES = ("shape", "texture", "other", "excluded", "uncovered")


# ------------------------------------------------------------------------ results
@dataclass(frozen=True)
class ImageDecision:
    """One stimulus and what the model decided.

    Attributes:
        path: path relative to the stimuli folder, ``/``-separated (``"cat/cat1-dog2.png"``).
        shape: shape label (the folder).
        texture: texture label (from the file name).
        decision: argmax category over the mapping's categories; None for ``"uncovered"``
            images (the model is not run on them).
        outcome: ``"shape"`` / ``"texture"`` (decision equals that label), ``"other"``
            (neither; discarded by the protocol), ``"excluded"`` (shape == texture, no cue
            conflict, step 5), ``"uncovered"`` (shape or texture category not in the mapping).
        scores: category -> mean softmax probability of its classes (step 3); None when
            the model was not run.
        texture_share: share of the last layer's CLS attention on high-texture patches
            (see :class:`TextureAttention`); None when not measured.
    """

    path: str
    shape: str
    texture: str
    decision: str | None
    outcome: str
    scores: dict[str, float] | None = None
    texture_share: float | None = None


@dataclass(frozen=True, repr=False)
class CategoryMapping:
    """Categories of the cue-conflict test and the model classes that vote for each.

    Attributes:
        name: built-in name (``"imagenet16"``, ``"cifar10"``), the JSON path as given, or
            ``"custom"`` for a dict.
        classes: category -> class indices (0-based) of the model's outputs.
    """

    name: str
    classes: dict[str, tuple[int, ...]]

    @property
    def categories(self) -> tuple[str, ...]:
        """The covered categories, sorted (the argmax order; ties go to the first)."""
        return tuple(sorted(self.classes))

    def __repr__(self) -> str:
        return (f"CategoryMapping(name={self.name!r}, {len(self.classes)} categories, "
                f"{sum(len(v) for v in self.classes.values())} classes: {', '.join(self.categories)})")

    @property
    def max_index(self) -> int:
        return max(i for idx in self.classes.values() for i in idx)


@dataclass(frozen=True)
class ShapeBiasResult:
    """Result of :func:`shape_bias`, with the parameters that made it.

    Every readable stimulus is in exactly one of ``n_shape``, ``n_texture``, ``n_other``,
    ``n_excluded``, ``n_uncovered``; their sum is ``n_images``. Files that were not
    evaluated at all are in ``skipped``.

    Attributes:
        shape_bias: ``n_shape / (n_shape + n_texture)``; None when that is 0/0.
        n_shape: cue-conflict images whose decision is the shape category.
        n_texture: cue-conflict images whose decision is the texture category.
        n_other: cue-conflict images decided as neither (not in the ratio, step 6).
        n_excluded: images with shape == texture (no cue conflict, step 5).
        n_uncovered: cue-conflict images whose shape or texture category the mapping
            does not cover (partial mappings such as ``cifar10``); not run, not counted.
        n_images: readable stimuli found.
        per_category: shape category -> shape bias among the images of that shape
            category, for every evaluated category; **None** (not NaN, so it stays valid
            JSON) when the category has no shape or texture decision.
        per_category_counts: shape category -> ``{"n_shape", "n_texture", "n_other"}``.
        categories: the evaluated categories: those the mapping covers, sorted; every
            decision is one of them.
        categories_skipped: categories of the stimuli (folders or textures) the mapping
            does not cover.
        categories_missing: evaluated categories with no stimuli folder (or an empty one).
        decisions: one :class:`ImageDecision` per readable stimulus, sorted by path.
        skipped: files not evaluated (non-image, hidden, unreadable), with reasons.
        texture_attention: :class:`TextureAttention`, or None (see
            ``texture_attention_reason``).
        texture_attention_reason: why ``texture_attention`` is None, else None.
        model: model label.
        mapping: mapping name or path.
        mapping_classes: the category -> class indices used.
        stimuli_dir: the stimuli folder as given.
        input_size: ``(H, W)`` the stimuli were resized to.
        interpolation: resize interpolation.
        mean: normalisation mean.
        std: normalisation std.
    """

    shape_bias: float | None
    n_shape: int
    n_texture: int
    n_other: int
    n_excluded: int
    n_uncovered: int
    n_images: int
    per_category: dict[str, float | None]
    per_category_counts: dict[str, dict[str, int]]
    categories: tuple[str, ...]
    categories_skipped: tuple[str, ...]
    categories_missing: tuple[str, ...]
    decisions: tuple[ImageDecision, ...]
    skipped: tuple[SkippedFile, ...]
    texture_attention: TextureAttention | None
    texture_attention_reason: str | None
    model: str
    mapping: str
    mapping_classes: dict[str, tuple[int, ...]]
    stimuli_dir: str
    input_size: tuple[int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (no NaN: missing values are None)."""
        return _jsonable(dataclasses.asdict(self))

    @property
    def params(self) -> dict[str, Any]:
        """The parameters that made the result (model, mapping, stimuli, preprocessing)."""
        return {"model": self.model, "mapping": self.mapping, "stimuli_dir": self.stimuli_dir,
                "input_size": self.input_size, "interpolation": self.interpolation, "mean": self.mean,
                "std": self.std, "texture_attention": self.texture_attention is not None}

    def __repr__(self) -> str:
        sb = "n/a" if self.shape_bias is None else f"{self.shape_bias:.3f}"
        lines = [f"ShapeBiasResult(  # shape bias {sb} of {self.model!r} on {self.n_images} stimuli",
                 f"    n_shape={self.n_shape}, n_texture={self.n_texture}, n_other={self.n_other}, "
                 f"n_excluded={self.n_excluded}, n_uncovered={self.n_uncovered},",
                 "    per_category: " + ", ".join(f"{c} {'n/a' if v is None else f'{v:.2f}'}"
                                                   for c, v in self.per_category.items()) + ","]
        if len(lines[-1]) > 160:
            lines[-1] = lines[-1][:150] + "...,"
        ta = self.texture_attention
        if ta is not None:
            share = "n/a" if ta.share is None else f"{ta.share:.3f}"
            chance = "n/a" if ta.chance is None else f"{ta.chance:.3f}"
            lines.append(f"    texture_attention: CLS share on high-texture patches {share} (uniform {chance}), "
                         f"layer {ta.layer},")
        else:
            lines.append(f"    texture_attention=None  # {self.texture_attention_reason},")
        lines.append(f"    decisions=<{len(self.decisions)} ImageDecision>, skipped=<{len(self.skipped)} files>, "
                     f"categories_skipped={describe(self.categories_skipped)}, "
                     f"categories_missing={describe(self.categories_missing)},")
        lines.append(f"    mapping={self.mapping!r} ({len(self.mapping_classes)} categories), "
                     f"stimuli_dir={self.stimuli_dir!r}, input_size={self.input_size}, "
                     f"interpolation={self.interpolation!r},")
        return "\n".join(lines) + "\n)"

    def _repr_html_(self) -> str:
        rows = []
        for c in self.categories:
            n = self.per_category_counts.get(c, {})
            v = self.per_category.get(c)
            rows.append([c, "n/a" if v is None else f"{v:.3f}", str(n.get("n_shape", 0)), str(n.get("n_texture", 0)),
                         str(n.get("n_other", 0))])
        sb = "n/a" if self.shape_bias is None else f"{self.shape_bias:.3f}"
        rows.append(["all", sb, str(self.n_shape), str(self.n_texture), str(self.n_other)])
        return html_table(f"ShapeBiasResult: {self.model}, shape bias {sb}",
                          ["category", "shape bias", "shape", "texture", "other"], rows, self.params)

    def summary(self) -> str:
        """One line: shape bias, counts and (when measured) the CLS texture share."""
        sb = "n/a" if self.shape_bias is None else f"{self.shape_bias:.3f}"
        line = (f"{self.model}: shape bias {sb} (shape {self.n_shape}, texture {self.n_texture}, "
                f"other {self.n_other}, excluded {self.n_excluded}, uncovered {self.n_uncovered}; "
                f"{len(self.categories)} categories, mapping {self.mapping})")
        ta = self.texture_attention
        if ta is not None and ta.share is not None:
            def f(v: float | None) -> str:
                return "n/a" if v is None else f"{v:.3f}"
            line += (f"; CLS attention on high-texture patches {f(ta.share)} (shape decisions "
                     f"{f(ta.share_shape)}, texture decisions {f(ta.share_texture)}, uniform {f(ta.chance)})")
        return line


# ------------------------------------------------------------------------ mappings
def _validate_classes(raw: Any, where: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(raw, Mapping) or not raw:
        raise VitlensError(f"mapping {where} must be a non-empty JSON object "
                           f'{{"category": [class indices]}}, got {type(raw).__name__}')
    out: dict[str, tuple[int, ...]] = {}
    for cat, idx in raw.items():
        if not isinstance(cat, str) or not cat or cat != cat.strip() or "/" in cat:
            raise VitlensError(f"mapping {where}: category names must be non-empty folder names, got {cat!r}")
        if (not isinstance(idx, (list, tuple)) or not idx
                or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in idx)):
            raise VitlensError(f"mapping {where}: category '{cat}' must map to a non-empty list of "
                               f"class indices (integers), got {idx!r}; leave a category out to skip it")
        if any(i < 0 for i in idx):
            raise VitlensError(f"mapping {where}: category '{cat}' has a negative class index {min(idx)}; "
                               f"indices are 0-based positions in the model's output")
        if len(set(idx)) != len(idx):
            raise VitlensError(f"mapping {where}: category '{cat}' lists a class index twice ({list(idx)})")
        out[cat] = tuple(int(i) for i in idx)
    return out


def load_mapping(mapping: str | os.PathLike[str] | Mapping[str, Sequence[int]] | CategoryMapping) -> CategoryMapping:
    """Read a category mapping ``{category: [class indices]}``.

    Args:
        mapping: a built-in name (``"imagenet16"``: the 16-class ImageNet-1k mapping of
            Geirhos et al. 2019 / model-vs-human; ``"cifar10"``: the demo model's CIFAR-10
            classes, 7 categories), a path to a JSON file, a dict, or a
            :class:`CategoryMapping`.

    Returns:
        The validated :class:`CategoryMapping`.

    Raises:
        VitlensError: unknown name, unreadable file, or malformed content.
    """
    if isinstance(mapping, CategoryMapping):
        return mapping
    if isinstance(mapping, Mapping):
        return CategoryMapping("custom", _validate_classes(mapping, "(dict)"))
    if not isinstance(mapping, (str, os.PathLike)):
        raise TypeError(f"mapping must be a built-in name {tuple(BUILTIN_MAPPINGS)}, a JSON path or a "
                        f"dict {{category: [class indices]}}, got {type(mapping).__name__}")
    if isinstance(mapping, str) and mapping in BUILTIN_MAPPINGS:
        text = (resources.files("vitlens.assets") / BUILTIN_MAPPINGS[mapping]).read_text()
        return CategoryMapping(mapping, _validate_classes(json.loads(text), f"'{mapping}'"))
    p = Path(mapping)
    if not p.is_file():
        close = difflib.get_close_matches(str(mapping), list(BUILTIN_MAPPINGS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise VitlensError(f"mapping '{mapping}' is neither a built-in mapping ({', '.join(BUILTIN_MAPPINGS)}) "
                           f"nor an existing JSON file{hint}")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise VitlensError(f"mapping file '{p}' could not be read: {e}") from None
    except json.JSONDecodeError as e:
        raise VitlensError(f"mapping file '{p}' is not valid JSON ({e}); expected "
                           f'{{"category": [class indices], ...}}') from None
    return CategoryMapping(str(mapping), _validate_classes(raw, f"file '{p}'"))


def default_mapping_name(model: nn.Module) -> str:
    """The built-in mapping for ``model``: ``"imagenet16"`` or ``"cifar10"``.

    1000 output classes -> ``"imagenet16"``; the bundled demo model
    (``pretrained_cfg["architecture"] == "demo"``) or a 10-class model whose class names
    are CIFAR-10's -> ``"cifar10"``.

    Raises:
        VitlensError: any other label space; pass ``mapping=`` then.
    """
    from ..models import class_names, is_demo

    cfg = getattr(model, "pretrained_cfg", None) or {}
    n = getattr(model, "num_classes", None)
    if n is None:  # transformers models count their labels in the config
        from ..hf_models import num_classes_hf

        n = num_classes_hf(model)
    if is_demo(cfg.get("architecture")):
        return "cifar10"
    if n == 1000:
        return "imagenet16"
    if n == 10:
        names = class_names(model)
        if names is not None and tuple(s.strip().lower() for s in names) == CIFAR10_LABELS:
            return "cifar10"
    what = f"{n} classes" if isinstance(n, int) else "an unknown number of classes"
    raise VitlensError(
        f"no built-in category mapping for this model ({type(model).__name__}, {what}): the "
        f"built-in ones are 'imagenet16' (ImageNet-1k, 1000 classes) and 'cifar10' (the demo "
        f"model); pass `mapping=PATH`, a JSON file {{\"category\": [class indices]}}")


# ------------------------------------------------------------------------ the measure
def _fit_input_size(model: nn.Module, cfg: dict[str, Any], explicit: bool) -> None:
    """Refuse an explicit data config whose input size a fixed-size ViT cannot take."""
    from ..models import fixed_input_size

    want = fixed_input_size(model)
    have = tuple(int(v) for v in cfg["input_size"][-2:])
    if explicit and want is not None and want != have:
        raise VitlensError(f"data_config input_size {have} does not match the model, which accepts only "
                           f"{want} (patch_embed.img_size); pass input_size (3, {want[0]}, {want[1]})")


def _model_label(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _check_range(mapping: CategoryMapping, n_classes: int) -> None:
    for cat in mapping.categories:
        bad = [i for i in mapping.classes[cat] if i >= n_classes]
        if bad:
            raise VitlensError(
                f"mapping '{mapping.name}' does not fit this model: category '{cat}' uses class index "
                f"{bad[0]}, but the model has {n_classes} classes (indices 0..{n_classes - 1}); pass the "
                f"mapping for this model's label space as `mapping=PATH`")


def _eval_transform(cfg: dict[str, Any]):
    """timm's eval transform as a plain resize to the input size (no crop) + normalise."""
    from ..models import make_transform

    return make_transform({"interpolation": "bicubic", **cfg, "crop_pct": 1.0, "crop_mode": "squash"})


# ------------------------------------------------------------------------ the protocol
def decide(probabilities: np.ndarray | torch.Tensor, shapes: Sequence[str], textures: Sequence[str],
           mapping: CategoryMapping) -> list[tuple[str, str, dict[str, float]]]:
    """Steps 3, 5 and 6 of the protocol for each image: ``(decision, outcome, scores)``.

    A pure function of the softmax probabilities and the stimulus labels (no model,
    no files): per category the **mean** probability of its classes (``scores``); the
    decision is the argmax over ``mapping.categories`` (sorted; a tie goes to the
    first); the outcome is ``"excluded"`` when shape == texture, else ``"shape"`` or
    ``"texture"`` when the decision equals that label, else ``"other"``.

    Args:
        probabilities: ``[N, C]`` softmax probabilities over all the model's classes.
        shapes: ``N`` shape labels; textures: ``N`` texture labels.
        mapping: the categories and the class indices that vote for each.
    """
    probs = probabilities.double().cpu().numpy() if isinstance(probabilities, torch.Tensor) \
        else np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(shapes) or len(shapes) != len(textures):
        raise ValueError(f"probabilities must be [N, classes] with one shape and one texture label per row; got "
                         f"{tuple(probs.shape)}, {len(shapes)} shapes, {len(textures)} textures")
    cats = mapping.categories
    scores = np.stack([probs[:, np.asarray(mapping.classes[c])].mean(axis=1) for c in cats], 1)  # np.mean
    choice = scores.argmax(axis=1)
    out = []
    for j, (shape, texture) in enumerate(zip(shapes, textures)):
        dec = cats[int(choice[j])]
        if shape == texture:
            outcome = "excluded"
        elif dec == shape:
            outcome = "shape"
        elif dec == texture:
            outcome = "texture"
        else:
            outcome = "other"
        out.append((dec, outcome, {c: float(scores[j, k]) for k, c in enumerate(cats)}))
    return out


def tally(decisions: Sequence[ImageDecision], categories: Sequence[str]
          ) -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, float | None]]:
    """Steps 6 and 7: counts per outcome, per shape category, and the per-category shape bias.

    Returns:
        ``(counts, per_category_counts, per_category)``: outcome -> images;
        category -> ``{"n_shape", "n_texture", "n_other"}``; category ->
        ``n_shape / (n_shape + n_texture)`` or None when that is 0/0.
    """
    counts = {o: sum(r.outcome == o for r in decisions) for o in OUTCOMES}
    per_counts = {c: {"n_shape": 0, "n_texture": 0, "n_other": 0} for c in categories}
    for r in decisions:
        if r.outcome in ("shape", "texture", "other"):
            per_counts[r.shape][f"n_{r.outcome}"] += 1
    per_cat = {c: (v["n_shape"] / (v["n_shape"] + v["n_texture"]) if v["n_shape"] + v["n_texture"] else None)
               for c, v in per_counts.items()}
    return counts, per_counts, per_cat


@torch.no_grad()
def shape_bias(model: nn.Module | Any, stimuli_dir: str | os.PathLike[str],
               mapping: str | os.PathLike[str] | Mapping[str, Sequence[int]] | CategoryMapping | None = None,
               *, data_config: dict[str, Any] | None = None, batch_size: int = 32,
               texture_attention: bool = True, model_name: str | None = None) -> ShapeBiasResult:
    """Shape bias of a classifier on texture–shape cue-conflict stimuli.

    The protocol of Geirhos et al. 2019 (https://arxiv.org/abs/1811.12231) as computed in
    bethgelab/model-vs-human, see ``shared/data/cue-conflict/SOURCE.md``:

    1. Each stimulus is resized to the model's input size (no crop; a no-op for 224 px
       stimuli and 224 px models) and normalised with the model's own mean/std, with
       timm's ``create_transform(..., crop_pct=1.0, crop_mode="squash")``.
    2. Softmax over all the model's classes.
    3. Per category, the **mean** softmax probability of its classes; the decision is the
       argmax over the mapping's categories (sorted; a tie goes to the first).
    4. Shape label = folder name; texture label = file name after the last ``_`` and the
       last ``-``, digits removed (:func:`texture_label`).
    5. Images whose shape equals their texture are dropped (``n_excluded``).
    6. ``n_shape`` = decisions equal to the shape label, ``n_texture`` = equal to the
       texture label; decisions matching neither (``n_other``) are discarded;
       **shape bias = n_shape / (n_shape + n_texture)**.
    7. Pooled over all trials; ``per_category`` gives the same ratio per shape category.

    Partial mappings (e.g. ``cifar10``, 7 of the 16 categories): only the covered
    categories are evaluated; a cue-conflict image whose shape *or* texture is not
    covered is not run and counts in ``n_uncovered``; decisions are the argmax over the
    covered categories only. Categories of the mapping without a stimuli folder are
    listed in ``categories_missing`` but remain possible decisions.

    For ViTs with a CLS token that :func:`vitlens.capture` supports, the same forward
    pass also records the last layer's CLS attention (``rows="prefix"``) and measures
    the share of it on high-texture patches (:class:`TextureAttention` gives the exact
    definition).

    Args:
        model: an ``nn.Module`` returning ``[B, classes]`` logits, a
            :class:`~vitlens.LoadedModel` ``(model, data_config)``, or a name for
            :func:`vitlens.load_model`. Run in eval mode (its train/eval state is restored
            afterwards) on the device of its parameters.
        stimuli_dir: folder with ``<shape category>/<shape><i>-<texture><j>.png``.
        mapping: built-in name (``"imagenet16"``, ``"cifar10"``), JSON path, or dict
            ``{category: [class indices]}``. Default: ``"imagenet16"`` for 1000-class
            models, ``"cifar10"`` for the demo model, else an error.
        data_config: timm data config (``input_size``, ``interpolation``, ``mean``,
            ``std``); default :func:`vitlens.models.data_config_of` of the model, with
            the input size of a fixed-size ViT (``patch_embed.img_size``) when the two
            differ. Its ``crop_pct``/``crop_mode`` are ignored (no crop here).
        batch_size: images per forward pass (does not change the result).
        texture_attention: also measure the CLS texture-attention share.
        model_name: label for the result (default: the timm architecture or class name).

    Returns:
        :class:`ShapeBiasResult`.

    Raises:
        VitlensError: missing/empty folder, a folder or texture label that is not a
            category, a stimulus name without texture label, an image outside the
            category folders, no readable stimuli, a mapping that does not fit the model
            (class index out of range) or no mapping for the model's label space.
        UnsupportedModelError: a model whose forward returns tokens, not class logits (a
            multimodal tower's encoder, ``*_enc``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    module, cfg, loaded_name = resolve_model(model, data_config)
    require_logits(module)  # decisions are predictions: a model returning tokens is refused with the reason
    _fit_input_size(module, cfg, explicit=data_config is not None)
    label = model_name or loaded_name or _model_label(module)
    cmap = load_mapping(mapping if mapping is not None else default_mapping_name(module))
    n_classes = getattr(module, "num_classes", None)
    if isinstance(n_classes, int) and not isinstance(n_classes, bool) and n_classes > 0:
        _check_range(cmap, n_classes)

    covered = set(cmap.classes)
    known = set(CUE_CONFLICT_CATEGORIES) | covered
    root = Path(stimuli_dir)
    stimuli, skipped, folders = scan_stimuli(root, known, cmap.name)

    transform = _eval_transform(cfg)
    input_size = tuple(int(v) for v in cfg["input_size"][-2:])
    cats = cmap.categories

    ta_reason = "not requested (texture_attention=False)" if not texture_attention \
        else texture_attention_unavailable(module)
    measure_ta = ta_reason is None
    device = model_device(module)

    decisions: dict[str, ImageDecision] = {}
    to_run: list[Stimulus] = []
    for s in stimuli:
        if s.shape in covered and s.texture in covered:
            to_run.append(s)
        else:  # not run, but still decoded so an unreadable file is reported, never hidden
            bad = unreadable(s)
            if bad is not None:
                skipped.append(bad)
                continue
            decisions[s.rel] = ImageDecision(s.rel, s.shape, s.texture, None, "uncovered")

    ta_layer = -1
    high_fraction: dict[str, float] = {}  # path -> fraction of high-texture patches
    with preserved_model_state(module):   # eval mode for the run; every submodule's own mode restored after
        for batch, x in stimulus_batches(to_run, transform, batch_size, skipped):
            x = x.to(device)
            shares: np.ndarray | None = None
            if measure_ta:
                from ..capture import capture

                with capture(module, layers=[-1], rows="prefix") as cache:
                    logits = logits_of(module, module(x))
                if cache.layout is None or cache.layout.cls_index is None:
                    measure_ta, ta_reason = False, "the model has no CLS token"
                else:
                    ta_layer = cache.layers[0]
                    shares, fractions = texture_shares(x, cache, cfg["mean"], cfg["std"])
            else:
                logits = logits_of(module, module(x))
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(batch):
                raise TypeError(f"the model must return logits of shape [batch, classes]; got "
                                f"{type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}")
            _check_range(cmap, int(logits.shape[1]))
            probs = logits.double().softmax(dim=-1).cpu().numpy()            # step 2
            for j, (s, (dec, outcome, scores)) in enumerate(zip(batch, decide(probs, [b.shape for b in batch],
                                                                                [b.texture for b in batch], cmap))):
                decisions[s.rel] = ImageDecision(s.rel, s.shape, s.texture, dec, outcome, scores=scores,
                                                 texture_share=None if shares is None else float(shares[j]))
                if shares is not None:
                    high_fraction[s.rel] = float(fractions[j])

    records = tuple(decisions[k] for k in sorted(decisions))
    if not records:
        first = skipped[-1].reason if skipped else "no reason recorded"
        raise VitlensError(f"none of the {len(stimuli)} stimuli in '{root}' could be read (e.g. {first})")

    counts, per_counts, per_cat = tally(records, cats)
    n_s, n_t = counts["shape"], counts["texture"]
    present = {s.shape for s in stimuli} | {s.texture for s in stimuli}
    with_images = {r.shape for r in records}

    ta: TextureAttention | None = None
    if measure_ta and not high_fraction:
        measure_ta, ta_reason = False, "no stimulus was run through the model (none covered by the mapping)"
    if measure_ta:
        ta = summarise_texture_attention(records, high_fraction, ta_layer)

    return ShapeBiasResult(
        shape_bias=n_s / (n_s + n_t) if n_s + n_t else None,
        n_shape=n_s, n_texture=n_t, n_other=counts["other"], n_excluded=counts["excluded"],
        n_uncovered=counts["uncovered"], n_images=len(records),
        per_category=per_cat, per_category_counts=per_counts,
        categories=cats,
        categories_skipped=tuple(sorted(present - covered)),
        categories_missing=tuple(c for c in cats if c not in folders or c not in with_images),
        decisions=records,
        skipped=tuple(sorted(skipped, key=lambda k: k.path)),
        texture_attention=ta, texture_attention_reason=None if ta is not None else ta_reason,
        model=label, mapping=cmap.name, mapping_classes=dict(cmap.classes),
        stimuli_dir=str(stimuli_dir), input_size=(input_size[0], input_size[1]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
    )
