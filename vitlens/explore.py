"""Data for the interactive attention explorer: run the model once on one image and collect
everything the page shows (``vitlens explore``, :func:`vitlens.explore`).

The page itself (HTML, JavaScript, the compact encoding of the arrays) is written by
:mod:`vitlens.export.explorer`; this module only runs the model and calls the analysis
functions, like :mod:`vitlens.batch` does:

- every recorded layer's attention probabilities (flat models: ``[H, T, T]``; windowed
  models such as Swin: the recorded ``[num_windows, H, n, n]`` plus each window position's
  stage token from :meth:`vitlens.WindowLayout.token_index`, so the page places a row in
  stage coordinates with the cyclic shift undone, as :meth:`AttentionCache.dense_attention`
  does);
- :func:`vitlens.rollout`, :func:`vitlens.attention_received` per layer and head,
  :func:`vitlens.mean_attention_distance` and :func:`vitlens.attention_entropy` per head;
- any :func:`vitlens.explain` method, for each of the top predicted classes when the method
  is class-specific;
- the original image and the box the model's input covers in it
  (:func:`vitlens.models.input_box`, the box :func:`vitlens.export.overlay.overlay` takes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from ._util import model_device, resolve_indices, resolve_model
from .analysis import attention_received, rollout
from .analysis.distance import attention_entropy, mean_attention_distance
from .analysis.explain import CLASS_AGNOSTIC, check_method, explain
from .capture import capture, logits_of
from .capture.cache import WindowLayout, from_windows

__all__ = ["explore", "explore_folder", "explorer_data", "Explorer", "ExplorerData", "LayerData", "MapData",
           "global_data", "GlobalData", "FolderResult"]


@dataclass
class LayerData:
    """One layer's attention and geometry, as the page needs it (numpy, float32).

    Attributes:
        layer: model layer index.
        grid: token grid ``(gh, gw)`` of this layer (the stage grid for Swin).
        patch: input pixels per token ``(ph, pw)`` (Swin: the stage's effective stride).
        heads: model head index of each row of ``attention`` (and of ``received``).
        attention: flat models ``[H, T, T]`` (query rows, key columns, prefix tokens first);
            windowed models ``[num_windows, H, n, n]`` as recorded.
        received: ``[H, gh, gw]`` from :func:`vitlens.attention_received`.
        window: the :class:`~vitlens.WindowLayout` (windowed models), else None.
        token_index: windowed: ``[num_windows, n]`` stage token at each window position
            (-1 = padding), from ``window.token_index()``.
        window_id, region_id: windowed: ``[gh * gw]`` the window (and shift-mask region) of
            every stage token in this block, for drawing the windows.
    """

    layer: int
    grid: tuple[int, int]
    patch: tuple[int, int]
    heads: list[int]
    attention: np.ndarray
    received: np.ndarray
    window: WindowLayout | None = None
    token_index: np.ndarray | None = None
    window_id: np.ndarray | None = None
    region_id: np.ndarray | None = None


@dataclass
class MapData:
    """A whole-image map tab: rollout, or an ``explain`` method.

    Attributes:
        name: method name (``"rollout"``, ``"chefer"``...).
        label: what the tab says.
        grid: ``(gh, gw)`` (the first stage's grid for Swin).
        maps: ``[K, gh, gw]``: one map per entry of ``classes`` (``K = 1`` and
            ``classes = None`` for class-agnostic maps).
        classes: class index each map explains, or None.
        patch: input pixels per cell.
    """

    name: str
    label: str
    grid: tuple[int, int]
    patch: tuple[int, int]
    maps: np.ndarray
    classes: list[int] | None = None


@dataclass
class ExplorerData:
    """Everything one explorer page shows, before encoding (see :mod:`vitlens.export.explorer`)."""

    image: Any                      #: the original image (PIL, RGB)
    name: str                       #: image name shown on the page
    box: tuple[float, float, float, float]  #: model input ``(x0, y0, x1, y1)`` in original pixels
    input_size: tuple[int, int]     #: model input ``(H, W)``
    model_name: str
    family: str
    prefix_names: tuple[str, ...]
    num_layers: int
    windowed: bool
    layers: list[LayerData]
    classes: list[dict[str, Any]]   #: top predictions: ``{"index", "name", "prob"}``
    maps: list[MapData]
    stats: dict[str, np.ndarray]    #: ``{"distance": [L, H], "entropy": [L, H]}`` (NaN: no such head)
    stat_units: dict[str, str] = field(default_factory=lambda: {"distance": "px", "entropy": "nats"})
    notes: list[str] = field(default_factory=list)


def _resolve_image(image: Any) -> tuple[Any, str]:
    from PIL import Image

    from .data import load_image

    if isinstance(image, (str, os.PathLike)):
        return load_image(image), Path(image).name
    if isinstance(image, Image.Image):
        return image.convert("RGB"), "image"
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return Image.fromarray(image), "image"
    raise TypeError(f"`image` must be a path, a PIL image or an HxWx3 uint8 array, got "
                    f"{type(image).__name__}{getattr(image, 'shape', '')}; tensors are not accepted because "
                    f"the page shows the original photo: pass the file or PIL image")


def _select(values: Sequence[int] | int | None, n: int, what: str, arg: str) -> list[int] | None:
    """Layers or heads the page keeps (None: every one; an empty selection is an error)."""
    if values is None:
        return None
    return list(resolve_indices(values, n, what, arg=arg, allow_empty=False))


def explorer_data(model: Any, image: Any, *, data_config: dict[str, Any] | None = None,
                  layers: Sequence[int] | int | None = None, heads: Sequence[int] | int | None = None,
                  methods: Sequence[str] = (), top_k: int = 5, name: str | None = None) -> ExplorerData:
    """Run ``model`` once on ``image`` and collect what the explorer page shows.

    Args:
        model: an ``nn.Module`` (with timm's data config), a ``LoadedModel`` or a model name.
        image: path, PIL image or HxWx3 uint8 array (the original photo).
        data_config: timm data config; default the model's own.
        layers: layers to put on the page (negative counts from the end); None = all.
            Rollout and the head statistics always use every layer.
        heads: heads to put on the page; None = all. Must exist in every chosen layer.
        methods: :func:`vitlens.explain` methods to add as tabs; class-specific ones are
            computed for each of the ``top_k`` predicted classes.
        top_k: predicted classes listed (and explained by class-specific methods).
        name: image name shown on the page (default the file name).

    Returns:
        :class:`ExplorerData`.
    """
    from .models import class_names, preprocess

    model, cfg, _ = resolve_model(model, data_config)
    img, default_name = _resolve_image(image)
    methods = [check_method(m) for m in methods]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive int, got {top_k!r}")
    pre = preprocess(img, cfg)
    dev = model_device(model)
    x = pre.tensor[None].to(dev)
    model.eval()
    with torch.no_grad(), capture(model) as cache:
        logits = logits_of(model, model(x))
    layout = cache.layout
    assert layout is not None
    n_layers = cache.num_layers
    chosen_layers = _select(layers, n_layers, "layer", "layers") or list(range(n_layers))
    layer_heads = [cache.layer_heads[i] if cache.layer_heads else cache.num_heads for i in range(n_layers)]
    fewest = min(layer_heads[i] for i in chosen_layers)
    chosen_heads = _select(heads, fewest, "head", "heads")

    out_layers: list[LayerData] = []
    for li in chosen_layers:
        hs = chosen_heads if chosen_heads is not None else list(range(layer_heads[li]))
        attn = cache.attention(li)[0].float()
        rec = attention_received(cache, layer=li, head=None)[0].float()[hs]
        if cache.windowed:
            wl = cache.layout_of(li)
            assert isinstance(wl, WindowLayout)
            idx = wl.token_index()
            nw, n = idx.shape
            win = from_windows(torch.arange(nw)[:, None].expand(nw, n).float(), wl)
            reg = from_windows(wl.region_labels().float(), wl)
            out_layers.append(LayerData(li, wl.grid_size, wl.patch_size, hs, attn[:, hs].cpu().numpy(),
                                        rec.cpu().numpy(), wl, idx.numpy().astype(np.int32),
                                        win.numpy().astype(np.int32), reg.numpy().astype(np.int32)))
        else:
            out_layers.append(LayerData(li, layout.grid_size, layout.patch_size, hs, attn[hs].cpu().numpy(),
                                        rec.cpu().numpy()))

    stats = {"distance": mean_attention_distance(cache)[0].cpu().numpy(),
             "entropy": attention_entropy(cache)[0].cpu().numpy()}
    first_patch = layout.patch_size
    maps = [MapData("rollout", "Rollout", layout.grid_size, first_patch, rollout(cache)[0:1].cpu().numpy())]
    del cache

    probs = logits.float().softmax(-1)[0].cpu()
    k = min(top_k, probs.numel())
    p, idx = probs.topk(k)
    names = class_names(model)
    classes = [{"index": int(i), "name": names[int(i)] if names and int(i) < len(names) else f"class {int(i)}",
                "prob": float(q)} for q, i in zip(p.tolist(), idx.tolist())]
    for m in methods:
        if m in CLASS_AGNOSTIC:
            res = explain(model, x, m, details=True)
            maps.append(MapData(m, m, tuple(res.layout.grid_size), res.layout.patch_size,
                                res.maps.float().cpu().numpy()))
        else:
            targets = [c["index"] for c in classes]
            res = explain(model, x.expand(len(targets), *x.shape[1:]), m, target=targets, details=True)
            maps.append(MapData(m, m, tuple(res.layout.grid_size), res.layout.patch_size,
                                res.maps.float().cpu().numpy(), targets))
    for md in maps:
        if md.maps.ndim != 3 or tuple(md.maps.shape[1:]) != tuple(md.grid):
            raise ValueError(f"method {md.name!r} gave maps of shape {tuple(md.maps.shape)}, not one "
                             f"{tuple(md.grid)} patch map per class; the explorer shows patch-grid maps only")

    model_name = str((getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__)
    return ExplorerData(
        image=img, name=name or default_name, box=tuple(float(v) for v in pre.box),
        input_size=tuple(int(v) for v in layout.input_size), model_name=model_name,
        family=str(getattr(getattr(model, "__class__", None), "__name__", "")), prefix_names=layout.prefix_names,
        num_layers=n_layers, windowed=bool(out_layers and out_layers[0].window is not None),
        layers=out_layers, classes=classes, maps=maps, stats=stats)


class Explorer:
    """An interactive attention explorer for one image (see :func:`explore`).

    Shows itself inline in Jupyter (``_repr_html_``: no server, no widgets; each instance
    is namespaced by its own id, so several coexist in one notebook), and writes a
    self-contained page with :meth:`save`.

    Attributes:
        data: the :class:`ExplorerData` it shows.
    """

    def __init__(self, data: ExplorerData, *, precision: str = "uint8", colormap: str = "jet",
                 max_image_side: int | None = None) -> None:
        from .export.explorer import check_options

        check_options(precision=precision, colormap=colormap, max_image_side=max_image_side)
        self.data = data
        self.precision, self.colormap, self.max_image_side = precision, colormap, max_image_side

    def _opts(self) -> dict[str, Any]:
        return {"precision": self.precision, "colormap": self.colormap, "max_image_side": self.max_image_side}

    def html(self) -> str:
        """The complete standalone page (``<!doctype html>`` ...)."""
        from .export.explorer import render_page

        return render_page(self.data, **self._opts())

    def _repr_html_(self) -> str:
        from .export.explorer import render_fragment

        return render_fragment(self.data, **self._opts())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the standalone page to ``path`` (``.html``); returns the path."""
        from .export.explorer import write_page

        return write_page(path, self.data, **self._opts())

    def __repr__(self) -> str:
        d = self.data
        return (f"Explorer({d.name!r}, model={d.model_name!r}, layers={[ly.layer for ly in d.layers]}, "
                f"maps={[m.name for m in d.maps]}, top={d.classes[0]['name'] if d.classes else None!r})")


def explore(model: Any, image: Any, *, data_config: dict[str, Any] | None = None,
            layers: Sequence[int] | int | None = None, heads: Sequence[int] | int | None = None,
            methods: Sequence[str] = (), top_k: int = 5, precision: str = "uint8", colormap: str = "jet",
            max_image_side: int | None = None, name: str | None = None) -> Explorer:
    """An interactive attention explorer of ``model`` on ``image``.

    Click or hover a patch to see its attention row (where it looks), the CLS row, or its
    column (what attends to it); a layer slider, a head selector (one head, mean, max, or
    every head side by side), tabs for rollout, attention received and any ``methods``,
    the predicted classes, and a clickable chart of per-head statistics. In Jupyter the
    returned object renders inline; ``.save("page.html")`` writes one self-contained file.

    Example::

        ex = vitlens.explore(model, "examples/chelsea.jpg", methods=["chefer"])
        ex                   # in a notebook: the explorer
        ex.save("chelsea.html")

    Args:
        model: an ``nn.Module``, a ``LoadedModel`` or a model name.
        image: path, PIL image or HxWx3 uint8 array.
        data_config: timm data config (default: the model's).
        layers: layers to include (None = all); fewer layers make a smaller page.
        heads: heads to include (None = all).
        methods: extra :func:`vitlens.explain` methods as tabs (e.g. ``["chefer"]``).
        top_k: predicted classes shown; class-specific methods explain each of them.
        precision: how attention is stored: ``"uint8"`` (per-row scaled, error at most
            1/510 of the row's largest value; a ViT-B/16 page at 224 px is ~8 MB) or
            ``"float16"`` (twice the size).
        colormap: OpenCV colormap name (:data:`vitlens.export.overlay.COLORMAPS`).
        max_image_side: shrink the embedded photo so its longer side is at most this
            (None: original resolution).
        name: image name shown on the page.
    """
    data = explorer_data(model, image, data_config=data_config, layers=layers, heads=heads, methods=methods,
                         top_k=top_k, name=name)
    return Explorer(data, precision=precision, colormap=colormap, max_image_side=max_image_side)


class FolderResult(NamedTuple):
    """What :func:`explore_folder` wrote."""

    pages: list[tuple[str, Path]]       #: ``(input name, page path)`` per page
    failed: list[tuple[str, str]]       #: ``(input name, reason)`` per image that could not be read
    global_page: Path | None            #: the query/key view, or None
    global_note: str | None             #: why there is no global view, when asked for and missing


def explore_folder(model: Any, inputs: str | os.PathLike[str] | Sequence[Any], out_dir: str | os.PathLike[str], *,
                   data_config: dict[str, Any] | None = None, progress: Callable[[int, int], None] | None = None,
                   global_view: bool = True, **options: Any) -> FolderResult:
    """One explorer page per image of a folder (or list) plus an ``index.html`` gallery and,
    with ``global_view``, ``global.html``: the joint query/key embedding of every image
    (:func:`global_data`), whose points link to the pages.

    Args:
        model: as for :func:`explore`.
        inputs: a folder (searched recursively), a file list, or a sequence of paths.
        out_dir: folder for the pages (created).
        data_config: timm data config (default the model's).
        progress: called as ``progress(done, total)`` after each image.
        global_view: also write ``global.html`` (models whose family has token-level
            queries and keys; otherwise ``global_note`` says why not).
        **options: :func:`explore`'s options (layers, heads, methods, top_k, precision,
            colormap, max_image_side).

    Returns:
        :class:`FolderResult`.
    """
    from .data import relative_name, resolve_inputs
    from .errors import ImageLoadError, UnsupportedModelError
    from .export.explorer import write_global, write_index

    model, cfg, _ = resolve_model(model, data_config)
    spec = resolve_inputs(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc = {k: options.pop(k) for k in ("precision", "colormap", "max_image_side") if k in options}
    pages: list[tuple[str, Path]] = []
    failed: list[tuple[str, str]] = []
    entries: list[tuple[str, str, ExplorerData]] = []
    taken: set[str] = {"global.html"}
    for i, path in enumerate(spec.paths):
        rel = relative_name(path, spec.root)
        try:
            data = explorer_data(model, path, data_config=cfg, name=rel, **options)
        except ImageLoadError as e:
            failed.append((rel, e.reason))
        else:
            page = Explorer(data, **enc).save(out / _page_name(rel, taken))
            pages.append((rel, page))
            entries.append((rel, page.name, data))
        if progress is not None:
            progress(i + 1, len(spec.paths))
    global_page, note = None, None
    if global_view and entries:
        try:
            gd = global_data(model, [d.image for _, _, d in entries], data_config=cfg,
                             names=[n for n, _, _ in entries], hrefs=[h for _, h, _ in entries],
                             layers=options.get("layers"), heads=options.get("heads"))
        except UnsupportedModelError as e:
            note = str(e)
        else:
            global_page = write_global(out / "global.html", gd)
    write_index(out / "index.html", entries, failed, global_href=global_page.name if global_page else None)
    return FolderResult(pages, failed, global_page, note)


@dataclass
class GlobalData:
    """The query/key view of a set of images (see :func:`global_data`)."""

    model_name: str
    prefix_names: tuple[str, ...]
    grid: tuple[int, int]
    names: list[str]                 #: image names
    hrefs: list[str]                 #: explorer page of each image ("" = none)
    thumbs: list[Any]                #: the model's input region of each image (PIL, square)
    layers: list[int]
    heads: list[list[int]]           #: model heads kept, per layer
    coords: list[np.ndarray]         #: per layer ``[H, 2, N * T, 2]``: head, query/key, image-major token, (x, y)
    explained: list[np.ndarray]      #: per layer ``[H, 2]`` variance fraction of the two axes


def global_data(model: Any, images: Sequence[Any], *, data_config: dict[str, Any] | None = None,
                names: Sequence[str] | None = None, hrefs: Sequence[str] | None = None,
                layers: Sequence[int] | int | None = None, heads: Sequence[int] | int | None = None,
                batch_size: int = 16) -> GlobalData:
    """Queries and keys of every token of ``images``, per layer and head, in one plane.

    For each layer and head, the query and key vectors of all tokens of all images
    (:func:`vitlens.capture.qk.queries_and_keys`) are embedded jointly by
    :func:`vitlens.analysis.embedding.query_key_embedding` (AttentionViz's scaling and key
    translation, then PCA).

    Args:
        model: as for :func:`explore` (a family with token-level queries and keys: ViT).
        images: paths, PIL images or arrays; all take the model's input size.
        data_config: timm data config (default the model's).
        names, hrefs: per image, its name and the page to link to.
        layers, heads: which to embed (None = all).
        batch_size: images per forward.
    """
    from .analysis.embedding import query_key_embedding
    from .capture.qk import queries_and_keys
    from .models import preprocess

    model, cfg, _ = resolve_model(model, data_config)
    imgs = [_resolve_image(im)[0] for im in images]
    if not imgs:
        raise ValueError("`images` is empty; the global view needs at least one image")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(imgs))]
    hrefs = list(hrefs) if hrefs is not None else [""] * len(imgs)
    pre = [preprocess(im, cfg) for im in imgs]
    dev = model_device(model)
    qs: dict[int, list[torch.Tensor]] = {}
    ks: dict[int, list[torch.Tensor]] = {}
    layout = None
    model.eval()
    for b0 in range(0, len(pre), batch_size):
        x = torch.stack([p.tensor for p in pre[b0:b0 + batch_size]]).to(dev)
        res = queries_and_keys(model, x, layers)
        layout = res.layout
        for layer in res.queries:
            qs.setdefault(layer, []).append(res.queries[layer].float().cpu())
            ks.setdefault(layer, []).append(res.keys[layer].float().cpu())
    assert layout is not None
    out_layers = sorted(qs)
    coords, explained, head_lists = [], [], []
    for layer in out_layers:
        q, k = torch.cat(qs[layer]), torch.cat(ks[layer])            # [N, H, T, d]
        hs = _select(heads, q.shape[1], "head", "heads") or list(range(q.shape[1]))
        c = np.zeros((len(hs), 2, q.shape[0] * q.shape[2], 2), np.float32)
        e = np.zeros((len(hs), 2), np.float32)
        for i, h in enumerate(hs):
            emb = query_key_embedding(q[:, h].reshape(-1, q.shape[-1]), k[:, h].reshape(-1, k.shape[-1]))
            c[i, 0], c[i, 1] = emb.queries.numpy(), emb.keys.numpy()
            e[i] = emb.explained.numpy()
        coords.append(c)
        explained.append(e)
        head_lists.append(hs)
    thumbs = [im.crop(tuple(round(v) for v in p.box)).resize((160, 160)) for im, p in zip(imgs, pre)]
    model_name = str((getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__)
    return GlobalData(model_name, layout.prefix_names, layout.grid_size, names, hrefs, thumbs, out_layers,
                      head_lists, coords, explained)


def _page_name(rel: str, taken: set[str]) -> str:
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(Path(rel).with_suffix(""))).strip("._") or "image"
    name, n = f"{stem}.html", 2
    while name in taken or name == "index.html":
        name, n = f"{stem}-{n}.html", n + 1
    taken.add(name)
    return name
