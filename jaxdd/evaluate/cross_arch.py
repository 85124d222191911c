"""Cross-architecture tables: one set, several networks, the same protocol and seeds.

`evaluate_set` is called once per model with the same key, so every architecture trains
from the same seed keys on the same set; this module checks the model names up front and
turns the results into a table kept next to the artefact (`cross_arch.json` holds every
table ever made for it, newest last; `cross_arch.md` renders them), written atomically.
"""

from __future__ import annotations

import datetime
import json
import os

import jax

from jaxdd import safeio
from jaxdd.models import get_model, param_count

JSON_NAME, MD_NAME = "cross_arch.json", "cross_arch.md"


def parse_models(text: str) -> list[str]:
    """'convnet, vgg11,convnet' -> ['convnet', 'vgg11'] (order kept, duplicates dropped)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--models {text!r} names no model; give a comma-separated list, e.g. "
                         f"convnet,resnet18,vgg11")
    return list(dict.fromkeys(names))


def check_models(names: list[str], num_classes: int, image_shape: tuple[int, int, int]) -> None:
    """Raise ValueError (one line) for an unknown name, or a net that cannot take these images,
    before any training starts. Shapes only: nothing is allocated or compiled."""
    for name in names:
        model = get_model(name, num_classes, image_shape)   # unknown -> lists the valid names
        try:
            jax.eval_shape(model.init, jax.random.key(0))
        except (ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"model {name!r} cannot take {image_shape} images: {first}") from None


def make_table(results: list[dict], num_classes: int, image_shape: tuple[int, int, int]) -> dict:
    """One table from `evaluate_set` results of the same set, protocol and seeds."""
    first = results[0]
    rows = [{"model": r["model"], "params": param_count(r["model"], num_classes, image_shape),
             "accuracy_mean": r["accuracy_mean"], "accuracy_std": r["accuracy_std"],
             "accuracies": r["accuracies"], "train_seconds": r["train_seconds"]}
            for r in results]
    keys = ("protocol", "seeds", "epochs", "batch_size", "lr", "lr_source", "report", "eval_seed", "method",
            "dataset", "ipc")
    return {**{k: first.get(k) for k in keys}, "rows": rows,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def table_markdown(table: dict) -> str:
    """A markdown table: model, parameters, test accuracy mean ± std (%), training time."""
    lr = ("" if table.get("lr") is None
          else f", lr {table['lr']:.4g} ({table.get('lr_source') or 'learned'})")
    head = (f"## {table.get('method')} {table.get('dataset')} IPC {table.get('ipc')}: protocol "
            f"{table['protocol']}, {table['seeds']} seeds (seed {table.get('eval_seed')}), "
            f"{table['epochs']} epochs, batch {table['batch_size']}{lr}; {table['report']} "
            f"test accuracy; {table['time']}")
    lines = [head, "", "| model | parameters | test accuracy (%) | train (s) |",
             "|---|---:|---:|---:|"]
    for r in table["rows"]:
        lines.append(f"| {r['model']} | {r['params']:,d} | {100 * r['accuracy_mean']:.2f} ± "
                     f"{100 * r['accuracy_std']:.2f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def write_table(artefact_dir: str, table: dict) -> list[str]:
    """Append `table` to DIR/cross_arch.json (earlier tables kept) and rewrite DIR/cross_arch.md
    from all of them; both atomic. Returns the two paths."""
    json_path, md_path = (os.path.join(artefact_dir, n) for n in (JSON_NAME, MD_NAME))
    try:
        with open(json_path) as f:
            tables = json.load(f).get("tables", [])
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        tables = []
    tables.append(table)
    safeio.write_json(json_path, {"format": "jaxdd-cross-arch", "tables": tables})
    md = ["# Cross-architecture evaluations (newest last)", "",
          "Same set, protocol and seed keys for every model; mean ± std over the seeds.", ""]
    safeio.write_text(md_path, "\n".join(md + [f"{table_markdown(t)}\n" for t in tables]))
    return [json_path, md_path]
