"""``vitlens inspect``: what an export file holds."""
from __future__ import annotations

import json

import click

from .common import handle_errors


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else ", ".join(map(str, v))
    return str(v)


@click.command()
@click.argument("path", metavar="OUTPUT.h5", type=click.Path(dir_okay=False))
@click.option("--failed", is_flag=True, help="Also list every failed row with its reason.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--repair", is_flag=True,
              help="If the export that wrote the file was killed, rewrite it (committed rows only) so that any "
                   "HDF5 tool opens it, e.g. h5py.File(path) or h5ls; --resume still works afterwards.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@handle_errors
def inspect(path, failed, as_json, debug, repair):
    """Show the model, rows (ok / failed) and datasets of an export file.

    Only committed rows count: a file an interrupted export left behind shows the
    batches committed before it stopped. A file whose export was killed opens only for
    SWMR reading (vitlens reads it; h5py.File(path) and h5ls refuse it) until --repair
    rewrites it.
    """
    import numpy as np

    from vitlens.export.hdf5 import read, repair as repair_file

    if repair:
        import h5py

        try:
            with h5py.File(path, "r"):
                needed = False
        except OSError:
            needed = True
        rows = repair_file(path)
        click.echo(f"repaired {path}: {rows} committed row(s) kept; any HDF5 tool opens it now" if needed
                   else f"{path} opens with any HDF5 tool already; nothing to repair", err=True)

    with read(path) as f:
        a = f.attrs
        ok = f.ok
        datasets = {k: {"shape": list(f[k].shape), "dtype": "str" if f[k].dtype == object else str(f[k].dtype),
                        "chunks": list(f[k].chunks) if f[k].chunks else None} for k in f.keys()}
        bad = [(i, f["images/path"][i], f["images/error"][i]) for i in np.flatnonzero(~ok)] if failed else []
        info = {
            "path": str(path), "schema": f.schema, "vitlens_version": a.get("vitlens_version"),
            "created": a.get("created"), "model": a.get("model"), "checkpoint": a.get("checkpoint") or None,
            "input_size": a.get("input_size"), "patch_size": a.get("patch_size"), "grid_size": a.get("grid_size"),
            "prefix_names": a.get("prefix_names"), "num_layers": a.get("num_layers"), "num_heads": a.get("num_heads"),
            "analyses": a.get("analyses"), "rows": f.rows, "rows_planned": a.get("rows_planned"),
            "complete": f.complete, "ok": int(ok.sum()), "failed": int((~ok).sum()), "datasets": datasets,
            "command": a.get("command"), "shards": a.get("shards"),
            "random_weights": bool(a.get("random_weights", False)),
        }
        if failed:
            info["failed_rows"] = [{"row": int(i), "path": p, "error": e} for i, p, e in bad]
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    out = [f"{path}: {info['schema']} (vitlens {info['vitlens_version']}, created {info['created']})",
           f"model: {info['model']}" + (f" (checkpoint {info['checkpoint']})" if info["checkpoint"] else "")
           + (" -- RANDOM WEIGHTS (untrained)" if info["random_weights"] else ""),
           f"  input {_fmt(info['input_size'])}, patch {_fmt(info['patch_size'])}, grid {_fmt(info['grid_size'])}, "
           f"prefix tokens [{_fmt(info['prefix_names'] or [])}], {info['num_layers']} layers x {info['num_heads']} heads",
           f"rows: {info['rows']} committed of {info['rows_planned']} planned"
           f" ({'complete' if info['complete'] else 'incomplete: continue with vitlens export ... --resume'})",
           f"  ok: {info['ok']}  failed: {info['failed']}"
           + ("\n  the writer is still running, or died without closing the file (kill, crash); "
              "--resume keeps the committed rows, `vitlens inspect FILE --repair` makes it readable by any HDF5 tool"
              if a.get("open_for_writing") and not info["complete"] else ""),
           f"analyses: {_fmt(info['analyses'] or [])}"]
    if a.get("cls_attention_omitted"):
        out.append(f"  cls_attention omitted: {a['cls_attention_omitted']}")
    if a.get("logits_omitted"):
        out.append(f"  logits omitted: {a['logits_omitted']}")
    if info["shards"]:
        out.append(f"view over shards (keep them beside it): {_fmt(info['shards'])}")
    elif a.get("merged_from"):
        out.append(f"merged from shards: {_fmt(a['merged_from'])} (self-contained)")
    out.append("datasets:")
    width = max(len(k) for k in datasets)
    for k, d in datasets.items():
        layout = f"chunks {tuple(d['chunks'])}" if d["chunks"] else ("virtual" if info["shards"] else "contiguous")
        out.append(f"  {k:<{width}}  {str(tuple(d['shape'])):<22} {d['dtype']:<8} {layout}")
    if info.get("command"):
        out.append(f"command: {info['command']}")
    for r in info.get("failed_rows", []):
        out.append(f"failed row {r['row']}: {r['path']}: {r['error']}")
    click.echo("\n".join(out))
