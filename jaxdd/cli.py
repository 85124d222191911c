"""`jaxdd` command line: configs and flags -> the library -> artefacts and JSON.

Every subcommand prints one clear `jaxdd: error: ...` line and exits non-zero on bad
input; with --json the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time


def _setup_jax() -> None:
    import jax

    from jaxdd.run.mesh import maybe_initialize_distributed
    maybe_initialize_distributed()
    # A persistent XLA compilation cache: on by default on GPU/TPU; on CPU only when
    # $JAXDD_CACHE_DIR names one (reading XLA:CPU executables back can abort the process in
    # the installed jaxlib). JAXDD_CACHE_DIR=off turns it off everywhere.
    cache = os.environ.get("JAXDD_CACHE_DIR", "")
    if cache.lower() in ("off", "0", "none"):
        return
    if not cache:
        if jax.default_backend() == "cpu":
            return
        cache = os.path.expanduser("~/.cache/jaxdd/xla")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _emit(result: dict, as_json: bool, human: str) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        print(human)


def _fmt_acc(r: dict) -> str:
    return (f"{100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f} % test accuracy "
            f"({r['seeds']} seeds, protocol {r['protocol']}, model {r['model']}, {r['seconds']:.0f} s)")


def cmd_models(args) -> int:
    from jaxdd.models import MODEL_NAMES, param_count
    shape, k = _dataset_shape(args.dataset)
    rows = [{"name": n, "params": param_count(n, k, shape)} for n in MODEL_NAMES]
    out = {"dataset": args.dataset, "num_classes": k, "input_shape": list(shape), "models": rows}
    _emit(out, args.json, "\n".join(f"{r['name']:<18} {r['params']:>12,d}" for r in rows))
    return 0


_KNOWN_SHAPES = {"cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100),
                 "mnist": ((28, 28, 1), 10), "fashion_mnist": ((28, 28, 1), 10),
                 "svhn_cropped": ((32, 32, 3), 10), "tiny_imagenet": ((64, 64, 3), 200),
                 "imagenet_resized/64x64": ((64, 64, 3), 1000)}


def _dataset_shape(name: str):
    if name in _KNOWN_SHAPES:
        return _KNOWN_SHAPES[name]
    from jaxdd.data import load_dataset
    ds = load_dataset(name)
    return ds.image_shape, ds.num_classes


def _load(name: str, seed: int = 0):
    from jaxdd.data import load_dataset
    return load_dataset(name, seed=seed)


def _evaluate_artefact(path: str, protocol: str, seeds: int, model: str | None, seed: int,
                       overrides: dict, quiet: bool, augment: bool = True,
                       soup: str | None = None, init: str | None = None,
                       checkpoint_dir: str | None = None) -> dict:
    """`overrides`: TrainConfig fields replacing the protocol's (None values are ignored);
    `augment=False`: the protocol without augmentation; `soup`, `init`, `checkpoint_dir`:
    see cmd_evaluate."""
    return _evaluate_models(path, protocol, seeds, [model], seed, overrides, quiet,
                            augment, soup, init, checkpoint_dir)[0][0]


def _checkpoint_dirs(top: str | None, models: list[str | None]) -> list[str | None]:
    """Where each model's students are checkpointed: `top` itself for one model, `top/<name>`
    for a cross-architecture list; each must be new, empty or an earlier evaluation's."""
    from jaxdd import safeio
    if top is None:
        return [None] * len(models)
    dirs = [top] if len(models) == 1 else [os.path.join(top, m) for m in models]
    if len(models) > 1:
        if os.path.exists(top) and not os.path.isdir(top):
            raise safeio.OutputError(f"--checkpoint-dir {top} is an existing file; choose a new "
                                     f"directory path")
        if safeio.is_run_dir(top):
            raise safeio.OutputError(f"--checkpoint-dir {top} holds one model's evaluation; "
                                     f"use another directory for --models")
    for d in dirs:
        safeio.check_run_out(d, "--checkpoint-dir")
    return dirs


def _evaluate_models(path: str, protocol: str, seeds: int, models: list[str | None], seed: int,
                     overrides: dict, quiet: bool, augment: bool = True,
                     soup: str | None = None, init: str | None = None,
                     checkpoint_dir: str | None = None):
    """(one result per model (None: the protocol's), all with the same seed keys; the
    artefact). The names are checked against the artefact's images before the dataset loads."""
    from jaxdd.evaluate import soups
    soups.check_soup(soup)
    import jax

    from jaxdd import artefact, safeio
    from jaxdd.evaluate import eval_data, evaluate_set, get_protocol
    from jaxdd.evaluate.cross_arch import check_models
    from jaxdd.run.progress import Progress
    art = artefact.load(path)
    proto = get_protocol(protocol, augment=augment,
                         **{k: v for k, v in overrides.items() if v is not None})
    # --lr replaces the artefact's learned lr as well as the protocol's
    lr, lr_source = ((overrides["lr"], "--lr") if overrides.get("lr") is not None
                     else (art.lr, None if art.lr is None else "learned"))
    named = [m for m in models if m is not None]
    if named:
        check_models(named, art.num_classes, tuple(art.x_syn_NHWC.shape[1:]))
    ck_dirs = _checkpoint_dirs(checkpoint_dir, models)
    inits = _weight_selection_inits(init, models, proto, art, seed)   # before any training
    ds = _load(art.meta["dataset"])
    data = eval_data(ds, art.preprocess)
    results = []
    for model, ck in zip(models, ck_dirs):
        label = f"evaluate {protocol}" + (f" {model}" if len(models) > 1 else "")
        with contextlib.ExitStack() as stack:
            if ck is not None:
                stack.enter_context(safeio.RunLock(ck, "--checkpoint-dir"))
            res = evaluate_set(jax.random.key(seed), art.x_syn_NHWC, art.y_syn, data, proto,
                               seeds, lr=lr, model_name=model,
                               progress=Progress(label, enabled=not quiet), soup=soup,
                               init_variables=inits[model][0] if inits else None,
                               init_name=init, checkpoint_dir=ck)
        if inits:
            res["init_selection"] = inits[model][1]
        res.update(method=art.meta["method"], dataset=art.meta["dataset"], ipc=art.meta["ipc"],
                   eval_seed=seed, lr_source=lr_source)
        results.append(res)
    return results, art


def _weight_selection_inits(init: str | None, models: list[str | None], proto, art, seed: int):
    """`--init weight-selection:DIR`: {model: (variables, info)} selected from the teacher
    (one shared init per student model; its fresh parts from the soups' shared-init key)."""
    import jax

    from jaxdd.evaluate.core import SHARED_INIT_FOLD
    from jaxdd.evaluate.weight_selection import from_teacher_dir, parse_init
    from jaxdd.models import get_model
    teacher_dir = parse_init(init)
    if teacher_dir is None:
        return {}
    out = {}
    for name in models:
        student = get_model(name or proto.model, art.num_classes, tuple(art.x_syn_NHWC.shape[1:]))
        out[name] = from_teacher_dir(teacher_dir, student,
                                     jax.random.fold_in(jax.random.key(seed), SHARED_INIT_FOLD),
                                     dataset=art.meta["dataset"],
                                     preprocess_kind=art.preprocess.kind)
    return out


def cmd_evaluate(args) -> int:
    from jaxdd import artefact
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    if args.models is None:
        res = _evaluate_artefact(args.dir, args.protocol, args.seeds, args.model, args.seed,
                                 overrides, args.quiet, augment=not args.no_aug, soup=args.soup,
                                 init=args.init, checkpoint_dir=args.checkpoint_dir)
        human = f"{args.dir}: {_fmt_acc(res)}"
        if "init_selection" in res:
            sel = res["init_selection"]
            human += (f"\n  students initialised by weight selection from {sel['teacher_model']} "
                      f"({sel['teacher']}; classifier: {sel['head']})")
        if "soup" in res:
            s = res["soup"]
            human += (f"\n  {s['kind']} soup of {len(s['members'])}/{res['seeds']} students: "
                      f"{100 * s['accuracy']:.2f} % test accuracy (students' mean "
                      f"{100 * res['accuracy_mean']:.2f} %)")
        _emit(res, args.json, human)  # printed before it is written
        artefact.add_evaluation(args.dir, res)
        return 0
    if args.soup:
        raise ValueError("--soup evaluates one student model; drop --models (or use --model)")
    from jaxdd.evaluate import cross_arch
    names = cross_arch.parse_models(args.models)
    results, art = _evaluate_models(args.dir, args.protocol, args.seeds, names, args.seed,
                                    overrides, args.quiet, not args.no_aug, init=args.init,
                                    checkpoint_dir=args.checkpoint_dir)
    table = cross_arch.make_table(results, art.num_classes, tuple(art.x_syn_NHWC.shape[1:]))
    files = [os.path.join(args.dir, n) for n in (cross_arch.JSON_NAME, cross_arch.MD_NAME)]
    _emit({**table, "files": files}, args.json,
          f"{args.dir}: cross-architecture\n{cross_arch.table_markdown(table)}")  # before writing
    for res in results:
        artefact.add_evaluation(args.dir, res)
    cross_arch.write_table(args.dir, table)
    if not args.json:
        print(f"wrote {files[0]} and {files[1]}")
    return 0


def cmd_baseline(args) -> int:
    import jax

    from jaxdd import artefact
    from jaxdd import data as jdata
    from jaxdd.evaluate import select
    from jaxdd.evaluate.baselines import DQ_BINS, select_streamed
    if args.bins is not None and args.method != "dq":
        raise ValueError(f"--bins applies to dq only, not {args.method}")
    args.bins = DQ_BINS if args.bins is None else args.bins
    relabel_over = _relabel_sets(args.relabel_set)
    if relabel_over and not args.relabel:
        raise ValueError("--relabel-set needs --relabel TEACHER_DIR (the soft-label teacher)")
    streamed = args.image_size is not None
    if streamed and args.method != "random":
        raise ValueError(f"baseline {args.method} computes features of every training image; "
                         f"with --image-size (streamed data) use random")
    if streamed and (not args.relabel or args.evaluate):
        raise ValueError("--image-size (streamed data) needs --relabel TEACHER_DIR and no "
                         "--evaluate: the subset is stored in the teacher's pixel space and "
                         "its KD students are tested on the streamed test split")
    if args.data_workers is not None and not streamed:
        raise ValueError("--data-workers applies to streamed data: add --image-size")
    artefact.check_target(args.out, args.overwrite)  # before any work: fail fast
    if streamed:  # nothing read yet: the labels on selection, then the chosen images only
        from jaxdd.data.stream import open_streamed
        ds = open_streamed(args.dataset, args.image_size, seed=args.seed,
                           workers=args.data_workers or 0)
    else:
        ds = _load(args.dataset, args.seed)
    extra = {}
    if args.relabel:  # soft labels: the subset must live in the teacher's pixel space
        from jaxdd.pipelines.teacher import check_compatible
        from jaxdd.population.teachers import read_manifest, read_preprocess, TeacherError
        man = read_manifest(args.relabel)
        check_compatible(man, ds.name, ds.num_classes, ds.image_shape)
        pre = read_preprocess(args.relabel, TeacherError)
        if args.preprocess not in (None, pre.kind):
            raise ValueError(f"--preprocess {args.preprocess}: the teacher at {args.relabel} "
                             f"uses {pre.kind}; drop --preprocess (relabel needs the teacher's)")
        extra = {"teacher_dir": os.path.abspath(args.relabel), "teacher_model": man["model"]}
    else:
        pre = jdata.fit_preprocess(args.preprocess or "normalize", ds.x_train,
                                   dataset_name=ds.name)
    t0 = time.time()
    if streamed:  # the draw of `select("random")`, from the labels; then those images only
        from jaxdd.data.stream import read_images
        idx = select_streamed(args.method, jax.random.key(args.seed), ds, args.ipc)
        x = jdata.apply(pre, read_images(ds.train, idx, ds.image_shape, threads=ds.workers))
        y = ds.train.labels()[idx]
    else:
        idx = select(args.method, jax.random.key(args.seed), ds, pre, args.ipc, args.features,
                     args.bins)
        x, y = jdata.apply(pre, ds.x_train[idx]), ds.y_train[idx]
    artefact.save(args.out, x, y, preprocess=pre, method=args.method,
                  dataset=ds.name, num_classes=ds.num_classes, ipc=args.ipc, seed=args.seed,
                  config={"features": args.features, "preprocess": pre.kind,
                          **({"bins": args.bins} if args.method == "dq" else {}),
                          **({"image_size": args.image_size,
                              "data_workers": args.data_workers or 0} if streamed else {}),
                          **({"relabel": relabel_over} if args.relabel else {})},
                  overwrite=args.overwrite,
                  extra={"distill_seconds": round(time.time() - t0, 2), **extra})
    if not args.evaluate and not args.relabel:
        _emit({"out": args.out}, args.json, f"wrote {args.out}")
        return 0
    res = None
    if args.evaluate:
        res = _evaluate_artefact(args.out, args.evaluate, args.seeds or 5, None, args.seed, {},
                                 args.quiet)
        artefact.add_evaluation(args.out, res)
        if not args.relabel:
            _emit(res, args.json, f"{args.method} IPC {args.ipc} on {ds.name}: {_fmt_acc(res)}")
            return 0
    # "random subset + soft labels": `jaxdd relabel OUT` with the options stored above
    from jaxdd.pipelines import sre2l as sm
    kd = sm.relabel(args.out, args.relabel, {"seeds": args.seeds}, args.quiet)
    kd = {**kd, "baseline": f"{args.method}+kd", "subset_seed": args.seed,
          **({"hard_label_evaluation": res} if res else {})}
    _emit(kd, args.json, f"{args.method} IPC {args.ipc} on {ds.name} + soft labels of "
                         f"{args.relabel}: {_fmt_acc(kd)}; label bytes "
                         f"{kd['label_bytes'] or kd['label_bytes_if_stored']:,d}"
                         f"{'' if kd['label_bytes'] else ' if stored'}")
    return 0


def _relabel_sets(pairs: list[str]) -> dict:
    """`--relabel-set KEY=VALUE` pairs -> a checked `relabel` config section."""
    from jaxdd.configs import _relabel_schema, check_section, parse_value
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"--relabel-set {pair}: use KEY=VALUE, e.g. epochs=300")
        out[key.strip()] = parse_value(value)
    return check_section(_relabel_schema()[0], out, "relabel") if out else {}


def cmd_full(args) -> int:
    """Upper bound: the protocol's network trained on the whole training set."""
    import jax

    from jaxdd import data as jdata
    from jaxdd.evaluate import eval_data, evaluate_set, get_protocol
    from jaxdd.run.progress import Progress
    ds = _load(args.dataset, args.seed)
    pre = jdata.fit_preprocess(args.preprocess, ds.x_train, dataset_name=ds.name)
    import dataclasses
    proto = get_protocol(args.protocol)
    full = proto.full_train if not args.epochs else dataclasses.replace(proto.full_train, epochs=args.epochs)
    proto = dataclasses.replace(proto, train=full)
    res = evaluate_set(jax.random.key(args.seed), jdata.apply(pre, ds.x_train), ds.y_train,
                       eval_data(ds, pre), proto, args.seeds, model_name=args.model,
                       progress=Progress("full data", enabled=not args.quiet))
    res.update(method="full", dataset=ds.name)
    _emit(res, args.json, f"full {ds.name}: {_fmt_acc(res)}")
    from jaxdd.evaluate import score  # `jaxdd score` reuses it
    score.store_full(score.full_cache_path(ds, pre, proto, args.model or proto.model,
                                           args.seeds, args.seed), res)
    return 0


def cmd_rs2(args) -> int:
    """RS2 (a fresh r-fraction of the data per epoch, without replacement across epochs)
    against full-data training at the same steps: accuracy and time-to-accuracy."""
    import jax

    from jaxdd import data as jdata
    from jaxdd import safeio
    from jaxdd.evaluate import eval_data, get_protocol
    from jaxdd.evaluate.rs2 import rs2_vs_full
    if args.out and os.path.exists(args.out) and not args.overwrite:
        raise ValueError(f"{args.out} exists; pass --overwrite or choose another file")
    if args.ratio == 0:   # _unit_fraction checked [0, 1]; before any data is loaded
        raise ValueError("RS2 ratio must lie in (0, 1], got 0")
    ds = _load(args.dataset, args.seed)
    pre = jdata.fit_preprocess(args.preprocess, ds.x_train, dataset_name=ds.name)
    res = rs2_vs_full(jax.random.key(args.seed), jdata.apply(pre, ds.x_train), ds.y_train,
                      eval_data(ds, pre), get_protocol(args.protocol), args.ratio, args.epochs,
                      args.seeds, args.model, args.target)
    res.update(dataset=ds.name, seed=args.seed)

    def line(name, r):
        tta = r["time_to_accuracy"]
        reach = ("not reached" if tta["steps"] is None else
                 f"reached at step {tta['steps']} ({tta['seconds']:.1f} s)")
        return (f"  {name:<5} {r['epochs']} epochs x {r['examples_per_epoch']} images = "
                f"{r['steps']} steps: {100 * r['accuracy_mean']:.2f} +- "
                f"{100 * r['accuracy_std']:.2f} % in {r['train_seconds']:.1f} s; target {reach}")
    _emit(res, args.json, "\n".join([
        f"RS2 ratio {args.ratio} on {ds.name} ({res['protocol']}, {res['model']}, "
        f"{res['seeds']} seeds; target {100 * res['target_accuracy']:.2f} %)",
        line("rs2", res["rs2"]), line("full", res["full"])]))
    if args.out:
        safeio.write_json(args.out, res)
    return 0


def _unit_fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1] (an accuracy as a fraction, "
                                         f"e.g. 0.894), got {text}")
    return v


def cmd_score(args) -> int:
    """DD-Ranking-style figures: HLR, IOR, LRS, ARS (jaxdd.evaluate.score)."""
    from jaxdd import artefact
    from jaxdd.evaluate import score
    from jaxdd.run.progress import Progress
    art = artefact.load(args.dir)  # fail fast on a missing or corrupt artefact
    ds = _load(art.meta["dataset"])
    rec = score.score(args.dir, ds, args.protocol, args.seeds, args.seed, model=args.model,
                      overrides={k: v for k, v in (("epochs", args.epochs),
                                                   ("batch_size", args.batch_size)) if v},
                      full_acc=args.full_acc, full_seeds=args.full_seeds,
                      full_epochs=args.full_epochs, w=args.lrs_weight, g=args.ars_weight,
                      progress=lambda name: Progress(f"score {name}", enabled=not args.quiet))
    f, a = rec["figures"], rec["accuracy"]
    rows = [f"{args.dir}: {rec['method']} IPC {rec['ipc']} on {rec['dataset']} ({rec['protocol']}"
            f", {rec['model']}, {rec['seeds']} seeds)"]
    rows += [f"  {k:<16} {100 * v['mean']:6.2f} +- {100 * v['std']:.2f} %" for k, v in a.items()]
    rows.append(f"  {'full (hard)':<16} {100 * rec['full']['accuracy_mean']:6.2f} %  "
                f"({rec['full']['source']})")
    rows += [f"  {k.upper():<16} {100 * v['mean']:6.2f} +- {100 * v['std']:.2f}"
             + (" %" if k.startswith(("hlr", "ior")) else " (x100)") for k, v in f.items()]
    _emit(rec, args.json, "\n".join(rows))  # printed before it is written
    score.write(args.dir, rec)
    return 0


def cmd_methods(args) -> int:
    from jaxdd import registry
    rows = [{"name": m.name, "family": m.family, "section": m.section, "doc": m.doc}
            for m in map(registry.get, registry.names())]
    _emit({"methods": rows}, args.json,
          "\n".join(f"{r['name']:<9} {r['family']:<11} [{r['section']}] {r['doc']}" for r in rows))
    return 0


def cmd_distill(args) -> int:
    from jaxdd import registry, safeio
    from jaxdd.configs import load_config
    from jaxdd.pipelines import common
    from jaxdd.run import metrics
    cfg = load_config(args.config, args.ipc, args.set)
    spec = registry.get(cfg["method"])
    if cfg.get("image_size") is not None and spec.family != "statistics":
        raise ValueError(f"image_size (streamed data) is supported by sre2l, cda, gvbsm, dwa "
                         f"and rded; {cfg['method']} needs the dataset in memory: remove "
                         f"image_size")
    if cfg.get("eval_every") and spec.family == "statistics":
        raise ValueError(f"eval_every evaluates one set while it is optimised; {spec.name} "
                         f"builds its set batch by batch: unset eval_every")
    if args.wandb:
        metrics.require_wandb()
    out = args.out or os.path.join("runs", f"{os.path.splitext(os.path.basename(args.config))[0]}-ipc{cfg['ipc']}")
    safeio.check_run_out(out)
    with safeio.RunLock(out):
        ctx = common.context(cfg, out, args.quiet, wandb=args.wandb)
        try:
            return _distill(args, cfg, spec, out, ctx)
        finally:
            ctx.writer.close()


def _distill(args, cfg, spec, out, ctx) -> int:
    """cmd_distill inside the run directory's lock: run, evaluate, print, write."""
    from jaxdd import registry
    from jaxdd.pipelines import common
    res = spec.run(ctx, registry.RunOptions(args.resume_step, args.stop_after))
    if res.get("stopped_early"):
        _emit({"out": out, "stopped_early": True}, args.json,
              "stopped early; resume with the same command")
        return 0
    result = {**{k: v for k, v in res.items() if k != "history"}, "out": out,
              "method": cfg["method"], "dataset": cfg["dataset"], "ipc": cfg["ipc"]}
    if not args.no_eval:
        result["evaluations"] = common.evaluate_with_baseline(ctx, res["artefacts"])
    human = [f"distilled {cfg['dataset']} IPC {cfg['ipc']} with {cfg['method']} in "
             f"{res['distill_seconds']:.0f} s -> {out}"
             + (f" (step compile {res['compile_seconds']:.1f} s, cached across runs)"
                if "compile_seconds" in res else "")]
    if res.get("best"):
        b = res["best"]
        human.append(f"  best on the validation split: iteration {b['iteration']}, val "
                     f"{100 * b['val_accuracy']:.2f} % -> {os.path.join(out, 'best')}")
    for name, r in result.get("evaluations", {}).items():
        human.append(f"  {name:<14} {_fmt_acc(r)}")
    flat = dict(result)
    if "evaluations" in result:
        main_ev = result["evaluations"]["artefact"]
        flat.update(accuracy_mean=main_ev["accuracy_mean"],
                    accuracy_std=main_ev["accuracy_std"], seeds=main_ev["seeds"])
        if "random" in result["evaluations"]:
            flat["random_accuracy_mean"] = result["evaluations"]["random"]["accuracy_mean"]
    _emit(flat, args.json, "\n".join(human))  # the result is shown before it is written
    common.write_result(out, result)
    return 0


def cmd_buffer(args) -> int:
    from jaxdd.configs import load_config
    from jaxdd.pipelines import common, mtt as tm
    cfg = load_config(args.config, None, args.set) if args.config else {
        "method": "mtt", "ipc": 1, "preprocess": args.preprocess, "experts": {}}
    for k in ("dataset", "model"):
        if getattr(args, k):
            cfg[k] = getattr(args, k)
    if args.experts:
        cfg["experts"]["num_experts"] = args.experts
    if args.epochs:
        cfg["experts"]["epochs"] = args.epochs
    if args.experts_per_program:
        cfg["experts"]["experts_per_program"] = args.experts_per_program
    if args.out:
        cfg["buffer_dir"] = args.out
    if "dataset" not in cfg or "model" not in cfg:
        raise ValueError("jaxdd buffer needs --config or both --dataset and --model")
    ctx = common.context(cfg, tm.buffer_dir(cfg), args.quiet)
    path = tm.build_experts(ctx)
    from jaxdd.population.experts import load_buffer
    info = load_buffer(path)
    res = {"buffer": path, "experts": len(info.complete_experts),
           "expert_test_accuracy": [r.test_accuracy for r in info.experts if r.test_accuracy is not None]}
    _emit(res, args.json, f"buffer {path}: {res['experts']} experts, test accuracy {res['expert_test_accuracy']}")
    return 0


def _teacher_cfg_from_args(args) -> dict:
    """A recover-style config dict holding the teacher section (from --config and flags)."""
    from jaxdd.configs import load_config
    cfg = load_config(args.config, None, args.set) if args.config else {
        "dataset": None, "seed": 0, "preprocess": "normalize", "teacher": {}}
    for flag, key in (("dataset", "dataset"), ("seed", "seed"), ("preprocess", "preprocess"),
                      ("image_size", "image_size"), ("data_workers", "data_workers")):
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    t = cfg.setdefault("teacher", {})
    for flag, key in (("model", "model"), ("epochs", "epochs"), ("lr", "lr"),
                      ("batch_size", "batch_size"), ("teachers", "num_teachers"), ("out", "dir"),
                      ("dsa", "dsa"), ("pad_crop", "pad_crop")):
        if getattr(args, flag) is not None:
            t[key] = getattr(args, flag)
    if args.pad_crop and args.dsa is None:  # --pad-crop replaces the default DSA family
        t["dsa"] = ""
    if not cfg.get("dataset") or not t.get("model"):
        raise ValueError("jaxdd teacher needs --config or both --dataset and --model")
    return cfg


def cmd_teacher(args) -> int:
    from jaxdd.pipelines import common
    from jaxdd.pipelines import teacher as pteacher
    from jaxdd.population import teachers as jteachers
    from jaxdd.run.progress import Progress
    cfg = _teacher_cfg_from_args(args)
    paths = pteacher.teacher_dirs(cfg)
    t0 = time.time()
    if args.from_torchvision:
        if len(paths) != 1:
            raise ValueError("--from-torchvision converts one model; give one teacher.model")
        from jaxdd.models import convert
        size = int(cfg.get("image_size") or 224)
        m = convert.torchvision_to_teacher(args.from_torchvision, cfg["teacher"]["model"], paths[0],
                                           cfg["dataset"], args.num_classes, (size, size, 3))
        _emit({"teacher": paths[0], "model": m["model"], "dataset": m["dataset"],
               "source": args.from_torchvision}, args.json,
              f"teacher {paths[0]}: {m['model']} converted from {args.from_torchvision}")
        return 0
    ds = common.load_data(cfg)
    tcfg = pteacher.teacher_config(cfg)
    out = []
    for model, path in zip(pteacher.teacher_models(cfg), paths):  # one directory per model
        t1 = time.time()
        m = jteachers.train_teachers(path, ds, model, tcfg, int(cfg.get("seed", 0)),
                                     preprocess=cfg.get("preprocess", "normalize"),
                                     progress_cb=Progress(f"teacher {model}", enabled=not args.quiet),
                                     mesh=common.mesh_from(cfg))
        recs = m["teachers"][:tcfg.num_teachers]
        out.append({"teacher": path, "model": m["model"], "dataset": m["dataset"],
                    "teachers": len(recs), "test_accuracy": [r["test_accuracy"] for r in recs],
                    "train_seconds": [r["train_time_s"] for r in recs],
                    "seconds": round(time.time() - t1, 2)})
    res = dict(out[0]) if len(out) == 1 else {
        "teachers": out, "dataset": out[0]["dataset"], "seconds": round(time.time() - t0, 2)}
    _emit(res, args.json, "\n".join(
        f"teacher {r['teacher']}: {r['teachers']} x {r['model']} on {r['dataset']}, "
        f"test accuracy {r['test_accuracy']}" for r in out))
    return 0


def cmd_recover(args) -> int:
    """`recover` is `distill --no-eval` (kept for scripts of the statistics family)."""
    if args.teacher:
        args.set = [*args.set, f"teacher.dir={args.teacher!r}"]
    args.no_eval, args.resume_step, args.stop_after = True, None, None
    return cmd_distill(args)


def cmd_relabel(args) -> int:
    from jaxdd import safeio
    from jaxdd.pipelines import sre2l as sm
    over = {"recipe": args.recipe, "mode": args.mode, "epochs": args.epochs, "top_k": args.top_k,
            "protocol": args.protocol, "model": args.model, "seeds": args.seeds,
            "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
            "temperature": args.temperature, "t2_factor": args.t2_factor,
            "lr_per_epoch": args.lr_per_epoch, "report": args.report, "loss": args.loss,
            "ce_weight": args.ce_weight, "eval_every": args.eval_every, "select": args.select,
            "cosine_span": args.cosine_span, "pad_crop": args.pad_crop,
            "mixup_alpha": args.mixup_alpha, "shuffle_patches": args.shuffle_patches,
            "labels": args.labels, "rank": args.rank, "extractor": args.extractor,
            "body_rank": args.body_rank, "fit_epochs": args.fit_epochs, "fit_lr": args.fit_lr,
            "label_dtype": args.label_dtype, "top_k_rest": args.top_k_rest,
            "label_epochs": args.label_epochs}
    with contextlib.ExitStack() as stack:
        if args.checkpoint_dir is not None:
            safeio.check_run_out(args.checkpoint_dir, "--checkpoint-dir")
            stack.enter_context(safeio.RunLock(args.checkpoint_dir, "--checkpoint-dir"))
        res = sm.relabel(args.dir, args.teacher, over, args.quiet,
                         checkpoint_dir=args.checkpoint_dir)
    lab = (f"; labels {res['label_bytes']:,d} B in {res['labels_file']}"
           if res["mode"] in ("stored", "static")
           else f"; stored labels would take {res['label_bytes_if_stored']:,d} B")
    if res["labels"] == "projector":
        p = res["projector"]
        lab = (f"; projector {res['label_bytes']:,d} B in {res['labels_file']} (stored labels "
               f"would take {res['label_bytes_if_stored']:,d} B; extractor: "
               f"{p['extractor_needs']}); agrees with the teacher on "
               f"{100 * p['top1_agreement']:.1f} % of the student's first-epoch batches")
    best = (f"\n  last epoch: {100 * res['accuracy_mean']:.2f} +- "
            f"{100 * res['accuracy_std']:.2f} %; {res['best_label']}: "
            f"{100 * res['best_accuracy_mean']:.2f} +- {100 * res['best_accuracy_std']:.2f} % "
            f"at epochs {res['best_epochs']}" if "best_label" in res else "")
    _emit(res, args.json,
          f"{res['artefact']}: {_fmt_acc(res)}; images {res['image_bytes']:,d} B"
          + (f", compensators {res['compensator_bytes']:,d} B" if "compensator_bytes" in res
             else "") + f"{lab}{best}")
    return 0


def cmd_export(args) -> int:
    from jaxdd import artefact, exchange
    exchange.check_export_target(args.out, args.overwrite)  # before any work: fail fast
    dataset = artefact.load(args.dir).meta.get("dataset", "")
    names = None  # class folder names: from a local dataset if it is still there, else k
    if dataset.startswith(("npz:", "folder:")):
        try:
            names = _load(dataset).class_names
        except (ValueError, OSError):
            pass
    res = exchange.export(args.dir, args.format, args.out, overwrite=args.overwrite,
                          class_names=names)
    _emit(res, args.json, f"exported {res['num_images']} images of {args.dir} as "
                          f"{args.format} -> {args.out}")
    return 0


def cmd_import(args) -> int:
    import numpy as np

    from jaxdd import artefact, exchange
    from jaxdd import data as jdata
    from jaxdd.population import mtt_import
    if args.format == "mtt_buffer" or (args.format is None and args.src and not args.images
                                       and mtt_import.is_mtt_buffer(args.src)):
        if args.src is None:
            raise ValueError("give the replay_buffer_<n>.pt file or its directory")
        mtt_import.check_target(args.out, args.overwrite)  # before any work: fail fast
        info = mtt_import.import_mtt_buffer(
            args.src, args.out, args.dataset, model_name=args.model or "convnet",
            preprocess=args.preprocess or "normalize", seed=args.seed,
            overwrite=args.overwrite)
        _emit({"out": args.out, "format": "mtt_buffer", "experts": info.num_experts,
               "epochs": info.epochs, "model": info.model_name}, args.json,
              f"imported {info.num_experts} MTT expert trajectories of {info.epochs} epochs "
              f"({info.model_name}) -> {args.out}")
        return 0
    if args.model:
        raise ValueError("--model applies to MTT expert buffers (replay_buffer_<n>.pt) only")
    artefact.check_target(args.out, args.overwrite)  # before any work: fail fast
    ds = _load(args.dataset, args.seed)
    fmt, s = exchange.read(args.src, args.format, ds.class_names, images=args.images,
                           labels=args.labels, lr=args.lr)
    what = args.src or args.images
    if s.preprocess is not None and (args.space == "pixel" or args.preprocess not in (
            None, s.preprocess.kind)):
        raise ValueError(f"{what} is a jaxdd export with its own {s.preprocess.kind} "
                         f"preprocessing and model-space images; drop --space/--preprocess")
    if args.space:
        s = s._replace(model_space=args.space == "model")
    x, y = exchange.check_set(s, ds.image_shape, ds.num_classes, what)
    pre = s.preprocess or jdata.fit_preprocess(args.preprocess or s.preprocess_kind
                                               or "normalize", ds.x_train, dataset_name=ds.name)
    if not s.model_space:
        x = jdata.apply(pre, x)
    ipc = int(np.bincount(exchange.hard_labels(y), minlength=ds.num_classes).max())
    artefact.save(args.out, x, y, preprocess=pre, method=f"imported:{fmt}", dataset=ds.name,
                  num_classes=ds.num_classes, ipc=ipc, seed=args.seed,
                  config={"preprocess": pre.kind, "space": "model" if s.model_space else "pixel"},
                  lr=s.lr, overwrite=args.overwrite,
                  extra={"source": os.path.abspath(what),
                         **({"source_labels": os.path.abspath(args.labels)} if args.labels else {})})
    _emit({"out": args.out, "format": fmt, "num_images": len(y), "ipc": ipc}, args.json,
          f"imported {len(y)} images ({fmt}) -> {args.out}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with jaxdd's one-line errors: `jaxdd: error: ...` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"jaxdd: error: {message} (see jaxdd {self.prog.split()[-1]} --help)\n")


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    parse.__name__ = f"integer >= {low}"
    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


POS, NONNEG = _at_least(1), _at_least(0)


def build_parser() -> argparse.ArgumentParser:
    import jaxdd
    p = _Parser(prog="jaxdd", description="Dataset distillation in JAX.")
    p.add_argument("--version", action="version", version=f"jaxdd {jaxdd.__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def common(sp, json_flag=True):
        if json_flag:
            sp.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
        sp.add_argument("--quiet", action="store_true",
                    help="no progress bars or event lines on stderr (bars are drawn only "
                         "when stderr is a terminal anyway)")

    sp = sub.add_parser("models", help="model names and parameter counts for a dataset")
    sp.add_argument("--dataset", default="cifar10")
    common(sp)
    sp.set_defaults(fn=cmd_models)

    sp = sub.add_parser("evaluate", help="train fresh networks on an artefact, report test accuracy")
    sp.add_argument("dir")
    sp.add_argument("--protocol", default="cpu", help="mtt | cpu | smoke")
    sp.add_argument("--seeds", type=POS, default=5, help="independent networks (vmapped)")
    which = sp.add_mutually_exclusive_group()
    which.add_argument("--model", default=None, help="cross-architecture: another registry name")
    which.add_argument("--models", default=None, metavar="A,B,...",
                       help="cross-architecture table: each registry name under the same "
                            "protocol and seeds (e.g. convnet,resnet18,vgg11); writes "
                            "cross_arch.json and cross_arch.md in the artefact")
    sp.add_argument("--epochs", type=POS, default=None, help="override the protocol's epochs")
    sp.add_argument("--batch-size", type=POS, default=None,
                    help="override the protocol's batch size (DATM evaluates with 128)")
    sp.add_argument("--lr", type=_positive_float, default=None,
                    help="train at this lr instead of the set's learned lr (MTT's) or the "
                         "protocol's 0.01 (e.g. a learned lr too large for another "
                         "architecture)")
    sp.add_argument("--no-aug", action="store_true",
                    help="train without augmentation (the protocol's DSA off)")
    sp.add_argument("--init", default=None, metavar="weight-selection:TEACHER_DIR",
                    help="start every student from weights selected out of a larger "
                         "pretrained ConvNet teacher (jaxdd teacher dir; Xu et al. 2024)")
    sp.add_argument("--soup", default=None, choices=["uniform", "greedy"],
                    help="also average the students' weights (model soup; greedy selects on "
                         "the validation split); the students then share one init")
    sp.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                    help="save the students' training in DIR after every tenth of the "
                         "epochs and resume from it when run again (a killed evaluation "
                         "continues bit-exactly); DIR is new, empty or an earlier run of this "
                         "same evaluation (--models: one subdirectory per model)")
    sp.add_argument("--seed", type=NONNEG, default=0)
    common(sp)
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("baseline", help="random / herding / k-center / Dataset Quantization "
                                         "real subset as an artefact")
    sp.add_argument("method", choices=["random", "herding", "kcenter", "dq"])
    sp.add_argument("--dataset", default="fashion_mnist")
    sp.add_argument("--ipc", type=POS, required=True, help="images per class")
    sp.add_argument("--out", required=True)
    sp.add_argument("--seed", type=NONNEG, default=0)
    sp.add_argument("--preprocess", default=None,
                    help="normalize (default) | zca | zca_kip | none; with --relabel: the "
                         "teacher's")
    sp.add_argument("--features", default="pixels",
                    help="herding/k-center/dq space: pixels | convnet")
    sp.add_argument("--bins", type=POS, default=None,
                    help="dq: bins per class (GraphCut; default 10); IPC is sampled evenly "
                         "from them")
    sp.add_argument("--evaluate", default=None, metavar="PROTOCOL", help="also evaluate it")
    sp.add_argument("--relabel", default=None, metavar="TEACHER_DIR",
                    help="subset + soft labels: train KD students on it with this teacher "
                         "(`jaxdd relabel`; the result is the artefact's evaluation)")
    sp.add_argument("--relabel-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a relabel option for --relabel (epochs=300, mode='stored', "
                         "top_k=2, label_dtype='int8', label_epochs=10, ...); stored in "
                         "the artefact's config")
    sp.add_argument("--seeds", type=POS, default=None,
                    help="students (--evaluate: 5; --relabel: relabel.seeds, 3)")
    sp.add_argument("--image-size", type=POS, default=None,
                    help="stream the data, decoded to this side (ImageNet): random with "
                         "--relabel only; reads the labels and the chosen images")
    sp.add_argument("--data-workers", type=NONNEG, default=None,
                    help="grain decoding processes for streamed data (default 0: threads)")
    sp.add_argument("--overwrite", action="store_true")
    common(sp)
    sp.set_defaults(fn=cmd_baseline)

    sp = sub.add_parser("export", help="an artefact as a PNG folder, an npz, MTT/DATM .pt "
                                       "files, a TFDS or a Hugging Face datasets directory")
    sp.add_argument("dir", help="artefact directory")
    sp.add_argument("--format", required=True, choices=["png", "npz", "torch", "tfds", "hf"])
    sp.add_argument("--out", required=True, help="new directory to write")
    sp.add_argument("--overwrite", action="store_true", help="replace a previous jaxdd export")
    common(sp)
    sp.set_defaults(fn=cmd_export)

    sp = sub.add_parser("import", help="a set made elsewhere (MTT/DATM .pt, image folder, npz, "
                                       "TFDS, datasets) as an artefact, or MTT expert "
                                       "trajectories (replay_buffer_<n>.pt) as a buffer")
    sp.add_argument("src", nargs="?", default=None,
                    help="export directory, image folder (<class>/*.png), .npz, TFDS or "
                         "datasets directory, or MTT replay_buffer_<n>.pt (or its directory)")
    sp.add_argument("--format", default=None,
                    choices=["png", "npz", "torch", "tfds", "hf", "mtt_buffer"],
                    help="default: from the source")
    sp.add_argument("--model", default=None,
                    help="MTT buffers: the jaxdd ConvNet of the experts (default convnet = "
                         "MTT's ConvNet-D3 W128 instance norm at 28/32 px)")
    sp.add_argument("--images", default=None, help="MTT/DATM images.pt (N, C, H, W)")
    sp.add_argument("--labels", default=None, help="labels.pt: (N,) classes or (N, K) logits")
    sp.add_argument("--lr", default=None, help="lr.pt: the learned evaluation lr")
    sp.add_argument("--dataset", required=True, help="the dataset the set was distilled from")
    sp.add_argument("--preprocess", default=None,
                    help="normalize | zca | zca_kip | none, fitted on the training split "
                         "(default: the export's, else normalize)")
    sp.add_argument("--space", default=None, choices=["model", "pixel"],
                    help="images already preprocessed (model; default for .pt) or pixels "
                         "(default for png / npz)")
    sp.add_argument("--out", required=True, help="artefact (or expert buffer) directory to write")
    sp.add_argument("--seed", type=NONNEG, default=0,
                    help="dataset validation split seed (for a buffer: the distill config's seed)")
    sp.add_argument("--overwrite", action="store_true")
    common(sp)
    sp.set_defaults(fn=cmd_import)

    sp = sub.add_parser("score", help="fair-comparison figures (DD-Ranking): with and without "
                                      "augmentation, hard and soft labels, against a random "
                                      "subset and the full data; writes DIR/score.json")
    sp.add_argument("dir", help="artefact directory")
    sp.add_argument("--protocol", default="cpu", help="mtt | cpu | smoke")
    sp.add_argument("--seeds", type=POS, default=3, help="networks per evaluation (vmapped)")
    sp.add_argument("--seed", type=NONNEG, default=0, help="key of every evaluation and of "
                                                           "the random subset")
    sp.add_argument("--model", default=None, help="another registry name (all evaluations)")
    sp.add_argument("--epochs", type=POS, default=None, help="override the protocol's epochs")
    sp.add_argument("--batch-size", type=POS, default=None)
    sp.add_argument("--full-acc", type=_unit_fraction, default=None,
                    help="known full-data accuracy in [0, 1] (skips its training)")
    sp.add_argument("--full-seeds", type=POS, default=1, help="networks on the full data")
    sp.add_argument("--full-epochs", type=POS, default=None,
                    help="override the full-data recipe's epochs")
    sp.add_argument("--lrs-weight", type=_unit_fraction, default=0.5,
                    help="w of LRS = norm(w IOR - (1 - w) HLR) (DD-Ranking: 0.5)")
    sp.add_argument("--ars-weight", type=_unit_fraction, default=0.5,
                    help="g of ARS = norm(g IOR_aug + (1 - g) IOR_noaug) (DD-Ranking: 0.5)")
    common(sp)
    sp.set_defaults(fn=cmd_score)

    sp = sub.add_parser("methods", help="the registered methods")
    common(sp)
    sp.set_defaults(fn=cmd_methods)

    sp = sub.add_parser("distill", help="distil a dataset with a config from configs/ (every method)")
    sp.add_argument("--config", required=True, help="a configs/*.py file")
    sp.add_argument("--ipc", type=POS, default=None, help="images per class (default: the config's)")
    sp.add_argument("--out", default=None, help="run directory (default runs/<config>-ipc<N>)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set mtt.syn_steps=20 (repeatable)")
    sp.add_argument("--resume-step", type=NONNEG, default=None,
                    help="resume from this checkpoint step instead of the latest")
    sp.add_argument("--stop-after", type=POS, default=None, help=argparse.SUPPRESS)
    sp.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    sp.add_argument("--wandb", action="store_true",
                    help="also log to Weights & Biases (needs the wandb package)")
    common(sp)
    sp.set_defaults(fn=cmd_distill)

    sp = sub.add_parser("buffer", help="train expert trajectories (resumable)")
    sp.add_argument("--config", default=None, help="take dataset/model/experts from a config")
    sp.add_argument("--dataset", default=None)
    sp.add_argument("--model", default=None)
    sp.add_argument("--experts", type=POS, default=None, help="number of experts")
    sp.add_argument("--epochs", type=POS, default=None, help="epochs per expert")
    sp.add_argument("--experts-per-program", type=POS, default=None, metavar="K",
                    help="train K experts together as one compiled program (same checkpoints)")
    sp.add_argument("--preprocess", default="normalize")
    sp.add_argument("--out", default=None, help="buffer directory")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    common(sp)
    sp.set_defaults(fn=cmd_buffer)

    sp = sub.add_parser("full", help="upper bound: train on the whole training set")
    sp.add_argument("--dataset", default="fashion_mnist")
    sp.add_argument("--protocol", default="cpu")
    sp.add_argument("--seeds", type=POS, default=1)
    sp.add_argument("--epochs", type=POS, default=None)
    sp.add_argument("--model", default=None)
    sp.add_argument("--seed", type=NONNEG, default=0)
    sp.add_argument("--preprocess", default="normalize")
    common(sp)
    sp.set_defaults(fn=cmd_full)

    sp = sub.add_parser("rs2", help="RS2 baseline: each epoch on a fresh random fraction of "
                                    "the data (no replacement across epochs) vs full-data "
                                    "training at the same steps; time-to-accuracy")
    sp.add_argument("--dataset", default="fashion_mnist")
    sp.add_argument("--ratio", type=_unit_fraction, required=True,
                    help="fraction r of the training set per epoch, in (0, 1]")
    sp.add_argument("--epochs", type=POS, default=None,
                    help="RS2 epochs (default: the protocol's full-data steps, full epochs / r)")
    sp.add_argument("--protocol", default="cpu", help="its full-data recipe and model")
    sp.add_argument("--model", default=None)
    sp.add_argument("--seeds", type=POS, default=1)
    sp.add_argument("--target", type=_unit_fraction, default=None,
                    help="time-to-accuracy target (default: the lower final accuracy)")
    sp.add_argument("--seed", type=NONNEG, default=0)
    sp.add_argument("--preprocess", default="normalize")
    sp.add_argument("--out", default=None, help="also write the result as JSON to this file")
    sp.add_argument("--overwrite", action="store_true")
    common(sp)
    sp.set_defaults(fn=cmd_rs2)

    sp = sub.add_parser("teacher", help="train BN teacher(s) for statistics matching (resumable)")
    sp.add_argument("--config", default=None, help="take dataset/teacher from a configs/sre2l file")
    sp.add_argument("--dataset", default=None)
    sp.add_argument("--model", default=None, help="a BN model, e.g. convnet_d3_w32_bn, resnet18 "
                    "(several architectures: teacher.model = [...] in --config)")
    sp.add_argument("--epochs", type=POS, default=None)
    sp.add_argument("--lr", type=_positive_float, default=None, help="SGD lr (default 0.1, cosine)")
    sp.add_argument("--batch-size", type=POS, default=None)
    sp.add_argument("--teachers", type=POS, default=None, help="number of teachers (G-VBSM)")
    sp.add_argument("--dsa", default=None, help="augmentation (default crop_flip; '' = none)")
    sp.add_argument("--pad-crop", type=NONNEG, default=None, metavar="PAD",
                    help="per-image RandomCrop(padding=PAD) + flip instead of DSA (G-VBSM: 4)")
    sp.add_argument("--preprocess", default=None)
    sp.add_argument("--out", default=None, help="teacher directory")
    sp.add_argument("--image-size", type=POS, default=None,
                    help="stream the data, decoded to this side (variable-size data, ImageNet)")
    sp.add_argument("--data-workers", type=NONNEG, default=None,
                    help="grain decoding processes for streamed data (default 0: threads)")
    sp.add_argument("--from-torchvision", default=None, metavar="PTH",
                    help="store torchvision weights (.pth state dict) as the teacher, no training")
    sp.add_argument("--num-classes", type=POS, default=1000,
                    help="classes of the --from-torchvision weights (default 1000)")
    sp.add_argument("--seed", type=NONNEG, default=None)
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    common(sp)
    sp.set_defaults(fn=cmd_teacher)

    sp = sub.add_parser("recover", help="= distill --no-eval (statistics-family scripts)")
    sp.add_argument("--config", required=True, help="a configs/sre2l/*.py file")
    sp.add_argument("--ipc", type=POS, default=None)
    sp.add_argument("--out", default=None, help="run directory (default runs/<config>-ipc<N>)")
    sp.add_argument("--teacher", default=None, help="teacher directory (overrides teacher.dir)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    common(sp)
    sp.set_defaults(fn=cmd_recover)

    sp = sub.add_parser("relabel", help="train KD students on an artefact with a teacher's soft labels")
    sp.add_argument("dir", help="artefact directory (or a recover run directory)")
    sp.add_argument("--teacher", default=None, help="teacher directory (default: the artefact's)")
    sp.add_argument("--recipe", default=None,
                    help="sre2l | sre2l_cifar | cda | rded | gvbsm | gvbsm_kd | infer | infer_dyn")
    sp.add_argument("--mode", default=None, choices=["online", "stored", "static"],
                    help="online: teacher per augmented batch; stored: FKD labels per epoch; "
                         "static: one label per image (INFER)")
    sp.add_argument("--epochs", type=POS, default=None)
    sp.add_argument("--top-k", type=NONNEG, default=None,
                    help="labels: keep the k most probable classes (0: all)")
    sp.add_argument("--top-k-rest", default=None, choices=["uniform", "drop"],
                    help="top-k: the other classes share 1 - the top-k mass evenly (uniform, "
                         "default) or get none (drop)")
    sp.add_argument("--label-dtype", default=None,
                    choices=["float16", "bfloat16", "float32", "int8", "int4"],
                    help="stored label values: a float type or per-row affine int8 / int4 codes")
    sp.add_argument("--label-epochs", type=NONNEG, default=None,
                    help="label pruning: keep M epochs of augmentations and labels and replay "
                         "them cyclically (0: a fresh epoch each time)")
    sp.add_argument("--protocol", default=None, help="student = this protocol's model")
    sp.add_argument("--model", default=None, help="student registry name (overrides protocol)")
    sp.add_argument("--seeds", type=POS, default=None)
    sp.add_argument("--seed", type=NONNEG, default=None)
    sp.add_argument("--batch-size", type=POS, default=None)
    sp.add_argument("--lr", type=_positive_float, default=None)
    sp.add_argument("--temperature", type=_positive_float, default=None, help="KD temperature T (SRe2L 20)")
    sp.add_argument("--t2", dest="t2_factor", action="store_const", const=True, default=None,
                    help="multiply the KD loss by T^2 (Hinton); SRe2L: no")
    sp.add_argument("--no-t2", dest="t2_factor", action="store_const", const=False,
                    help="no T^2 factor (the default of every recipe)")
    sp.add_argument("--lr-per-step", dest="lr_per_epoch", action="store_const", const=False,
                    default=None, help="cosine lr per step instead of per epoch")
    sp.add_argument("--lr-per-epoch", dest="lr_per_epoch", action="store_const", const=True,
                    help="cosine lr stepped once per epoch (torch scheduler; the default)")
    sp.add_argument("--cosine-span", type=float, default=None,
                    help="part of the cosine half period the lr covers (1: decays to 0; "
                         "RDED 0.5: ends at half)")
    sp.add_argument("--loss", default=None, choices=["kd", "mse_ce"],
                    help="kd: KL at temperature T; mse_ce: G-VBSM logit matching, "
                         "MSE(logits) + ce_weight * CE(y)")
    sp.add_argument("--ce-weight", type=float, default=None, help="CE weight of mse_ce (0.1)")
    sp.add_argument("--pad-crop", type=NONNEG, default=None,
                    help="RandomCrop(size, padding=P) per image; 0: off (sre2l_cifar: 4)")
    sp.add_argument("--mixup-alpha", type=float, default=None,
                    help="MixUp Beta(a, a) of the images; 0: off (sre2l_cifar: 0.8)")
    sp.add_argument("--shuffle-patches", type=POS, default=None,
                    help="shuffle each image's F x F patches (RDED); 1: off")
    sp.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                    help="train the students in segments (of --eval-every epochs with --report "
                         "best, else a tenth of the epochs), save them in DIR after each and "
                         "resume from it when run again (bit-exact); DIR is new, empty or an "
                         "earlier run of this same relabel")
    sp.add_argument("--report", default=None, choices=["last", "best"],
                    help="last (final epoch, default) | best: also the best of an evaluation "
                         "every --eval-every epochs, reported next to the last")
    sp.add_argument("--eval-every", type=POS, default=None, help="report best: epochs between "
                                                                  "evaluations (default 10)")
    sp.add_argument("--select", default=None, choices=["test", "val"],
                    help="report best: pick the epoch on test (optimistic, as the references) "
                         "or on the validation split (default test)")
    sp.add_argument("--labels", default=None, choices=["teacher", "projector"],
                    help="teacher: its logits (--mode online/stored); projector: fit a "
                         "low-rank projector on a frozen extractor to the teacher, store it "
                         "(DIR/projector.npz) and generate the labels on the fly (HeLlO)")
    sp.add_argument("--rank", type=POS, default=None, help="projector: rank of its head (4)")
    sp.add_argument("--extractor", default=None, choices=["teacher", "random"],
                    help="projector: frozen features of the teacher's body, or of its "
                         "architecture freshly initialised from --seed (0 bytes)")
    sp.add_argument("--body-rank", type=NONNEG, default=None,
                    help="projector: LoRA rank on every extractor kernel (0: off)")
    sp.add_argument("--fit-epochs", type=POS, default=None,
                    help="projector: epochs of augmented synthetic batches to fit it (300)")
    sp.add_argument("--fit-lr", type=_positive_float, default=None,
                    help="projector: Adam learning rate of the fit, cosine to 0 (0.03)")
    common(sp)
    sp.set_defaults(fn=cmd_relabel)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_jax()
    try:
        return args.fn(args)
    except (ValueError, KeyError, RuntimeError, FloatingPointError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"jaxdd: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a file jaxdd had to read or write
        where = f" {e.filename}" if e.filename else ""
        print(f"jaxdd: error: cannot access{where} ({e.strerror or e}); check the path and its "
              f"permissions", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
