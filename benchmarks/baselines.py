"""Fashion-MNIST coreset baselines under the `cpu` protocol, the full-data upper bound,
and the cost of vmapped seeds (time of K seeds / time of 1 seed).

    python benchmarks/baselines.py [--ipcs 1 10 50] [--seeds 3] [--protocol cpu]

Prints one JSON line; writes benchmarks/results/baselines_<protocol>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write  # noqa: E402

from jaxdd import data as jdata  # noqa: E402
from jaxdd.evaluate import eval_data, evaluate_set, get_protocol, select  # noqa: E402
from jaxdd.evaluate.core import label_targets, train_seeds  # noqa: E402
from jaxdd.models import get_model  # noqa: E402
from jaxdd.run.progress import Progress  # noqa: E402


def vmap_ratio(proto, ds, pre, ipc: int, k: int) -> dict:
    """Wall time of k vmapped seeds / 1 seed (compiled once each, timed on a second call)."""
    idx = select("random", jax.random.key(0), ds, pre, ipc)
    x = jdata.apply(pre, ds.x_train[idx])
    y = label_targets(ds.y_train[idx], ds.num_classes)
    model = get_model(proto.model, ds.num_classes, ds.image_shape)
    times = {}
    for n in (1, k):
        keys = jax.random.split(jax.random.key(1), n)
        jax.block_until_ready(train_seeds(keys, model, proto.train, x, y))  # compile + warm
        t0 = time.time()
        jax.block_until_ready(train_seeds(keys, model, proto.train, x, y))
        times[n] = time.time() - t0
    return {"ipc": ipc, "seeds": k, "t_1": round(times[1], 2), f"t_{k}": round(times[k], 2),
            "ratio": round(times[k] / times[1], 3)}


def _partial(args, proto, rows) -> None:
    """Keep what is measured on disk while the long run goes on (marked partial)."""
    import json
    os.makedirs(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                        f"baselines_{proto.name}.partial.json")
    with open(path, "w") as f:
        json.dump({"benchmark": "baselines", "partial": True, "protocol": proto.name,
                   "seeds": args.seeds, "rows": rows}, f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipcs", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--methods", nargs="+", default=["random", "herding", "kcenter"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--protocol", default="cpu")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--full-epochs", type=int, default=None)
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--vmap-ipc", type=int, default=10)
    args = ap.parse_args()

    ds = jdata.load_dataset(args.dataset)
    pre = jdata.fit_preprocess("normalize", ds.x_train, dataset_name=ds.name)
    proto = get_protocol(args.protocol)
    data = eval_data(ds, pre)
    rows = []
    for ipc in args.ipcs:
        for method in args.methods:
            t0 = time.time()
            idx = select(method, jax.random.key(0), ds, pre, ipc)
            t_sel = time.time() - t0
            r = evaluate_set(jax.random.key(0), jdata.apply(pre, ds.x_train[idx]), ds.y_train[idx],
                             data, proto, args.seeds, progress=Progress(f"{method} ipc{ipc}"))
            rows.append({"method": method, "ipc": ipc, "accuracy_mean": r["accuracy_mean"],
                         "accuracy_std": r["accuracy_std"], "accuracies": r["accuracies"],
                         "select_seconds": round(t_sel, 2), "eval_seconds": r["seconds"]})
            print(rows[-1], file=sys.stderr, flush=True)
            _partial(args, proto, rows)
    result = {"benchmark": "baselines", "dataset": ds.name, "protocol": proto.name,
              "model": proto.model, "seeds": args.seeds, "features": "pixels", "rows": rows,
              "environment": environment()}
    result["vmap"] = vmap_ratio(proto, ds, pre, args.vmap_ipc, 5)
    print(result["vmap"], file=sys.stderr, flush=True)
    if not args.skip_full:
        import dataclasses
        full = dataclasses.replace(proto, train=proto.full_train if args.full_epochs is None else
                                   dataclasses.replace(proto.full_train, epochs=args.full_epochs))
        r = evaluate_set(jax.random.key(0), jdata.apply(pre, ds.x_train), ds.y_train, data, full,
                         1, progress=Progress("full data"))
        result["full"] = {"accuracy": r["accuracy_mean"], "epochs": full.train.epochs,
                          "seconds": r["seconds"]}
    write(f"baselines_{proto.name}", result)


if __name__ == "__main__":
    main()
