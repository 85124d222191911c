#!/usr/bin/env python
"""The MTT outer step in jaxdd against an equivalent PyTorch implementation.

What is timed (identical in both): ConvNet-D3 (width W, instance norm = torch GroupNorm(C, C),
ReLU, 2x2 average pool, linear) on 28x28x1 grey images padded by 3 in the first conv, 10
classes; the same initial weights (jaxdd's PyTorch-default init, copied across), the same
synthetic images, hard labels, inner lr, the same inner minibatch schedule (batch_syn = all,
fresh permutation per step), no augmentation. One outer step = N inner SGD steps + the
matching loss + its gradient w.r.t. the images and log(lr).

- jaxdd: `jaxdd.methods.tm_grad.matching_loss_and_grads` (jitted) for each gradient mode
  bptt / remat / tesla, with the student as `jaxdd distill` builds it: `get_model`'s ConvNet
  (channel-major im2col) and, on a single CPU device, its forward in `auto_chunks` chunks
  (`--image-chunks 1` times the whole-batch forward instead).
- PyTorch: a flat parameter vector and a hand-written functional ConvNet, `create_graph=True`
  through the N inner steps as MTT's reference (distill.py + ReparamModule) does; jaxdd's
  bptt and remat are compared with it. For tesla, a PyTorch TESLA (forward without graph,
  then one recomputed VJP per step) written the same way.

Before timing, each config checks that both compute the same loss and the same gradients
w.r.t. images and lr: relative L2 error <= 1e-9 in float64 (the same math; they agree to
~1e-15) and <= --tol (5e-3) in float32; exits non-zero otherwise. The float32 bound is loose on
purpose: the second-order image gradient is ill-conditioned and BOTH libraries' float32 results
are ~1e-4..5e-4 away from the float64 one (width 32, N 5: jaxdd 4.9e-4, PyTorch 1.5e-4), so a
1e-4 bound would test rounding, not equality; both float32 errors are recorded in the JSON.
Timing: --warmup untimed runs, then --repeats timed runs alternating jaxdd and PyTorch;
medians reported. jaxdd's compile time (lower + compile) is reported separately.

Usage:
  python benchmarks/tm_vs_torch.py --quick                      # the cpu preset + w64
  python benchmarks/tm_vs_torch.py                              # full sweep (slow on CPU)
  python benchmarks/tm_vs_torch.py --configs 32x10x10,64x10x10 --modes remat
  python benchmarks/tm_vs_torch.py --device cuda                # JAX CUDA + torch CUDA
A config is WIDTHxSYN_STEPSxIPC. Prints one JSON line and writes it to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

FULL = [(w, n, ipc) for w in (32, 64, 128) for n in (5, 10, 20) for ipc in (1, 10)]
QUICK = [(32, 10, 10), (32, 10, 1), (64, 10, 10)]
MODES = ("bptt", "remat", "tesla")
NUM_CLASSES, HW = 10, 28
TOL64 = 1e-9  # jaxdd vs PyTorch in float64: the same computation agrees to ~1e-15


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="configs " + ",".join("x".join(map(str, c)) for c in QUICK))
    p.add_argument("--configs", default=None, help="comma list of WIDTHxSYN_STEPSxIPC, e.g. 32x10x10,64x20x1")
    p.add_argument("--modes", default=",".join(MODES), help="jaxdd gradient modes (bptt,remat,tesla)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--unroll", default="auto",
                   help="lax.scan unroll of jaxdd's inner loop: auto (True on cpu, 1 on cuda), true, or an int")
    p.add_argument("--conv-impl", default="auto", choices=("auto", "im2col_cm", "im2col", "lax"),
                   help="jaxdd ConvNet conv_impl (auto = the library default, channel-major im2col)")
    p.add_argument("--image-chunks", default="auto",
                   help="chunks of jaxdd's student forward (auto = the library default, "
                        "jaxdd.models.auto_chunks; 1 = whole batch)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--tol", type=float, default=5e-3,
                   help="max relative L2 error jaxdd vs torch in float32 (float64 agreement is reported too)")
    p.add_argument("--no-check64", dest="check64", action="store_false",
                   help="skip the float64 equality check (jaxdd and torch in float64 agree to ~1e-15)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: usable cores)")
    p.add_argument("--no-torch-tesla", action="store_true", help="skip the PyTorch TESLA reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/tm_vs_torch_<device>.json)")
    args = p.parse_args(argv)
    if args.configs:
        args.config_list = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs.split(",") if c]
    else:
        args.config_list = QUICK if args.quick else FULL
    args.mode_list = [m for m in args.modes.split(",") if m]
    for m in args.mode_list:
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
    u = args.unroll.lower()
    args.unroll_value = ({"auto": args.device == "cpu", "true": True, "false": 1}.get(u) if u in ("auto", "true", "false")
                         else int(u))
    if args.out is None:
        args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"tm_vs_torch_{args.device}.json")
    return args


ARGS = parse_args(None if __name__ == "__main__" else [])  # importable: stages_vs_torch.py reuses its helpers
# Select the JAX backend before jax is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu" if ARGS.device == "cpu" else "cuda")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import write  # noqa: E402
from jaxdd.methods.mtt import AUTO_MAX_CHUNKS  # noqa: E402
from jaxdd.methods.tm_grad import make_inner_schedule, matching_loss_and_grads  # noqa: E402
from jaxdd.models import auto_chunks, chunked, get_model  # noqa: E402

# ----------------------------------------------------------------------------------------------
# The problem (shared)
# ----------------------------------------------------------------------------------------------


def make_problem(width, syn_steps, ipc, seed):
    num_syn = NUM_CLASSES * ipc
    model = get_model(f"convnet_d3_w{width}", NUM_CLASSES, (HW, HW, 1), conv_impl=ARGS.conv_impl)
    k_init, k_pert, k_x, k_sched = jax.random.split(jax.random.key(seed), 4)
    theta_0 = model.init(k_init)["params"]
    leaves, treedef = jax.tree.flatten(theta_0)
    pk = jax.random.split(k_pert, len(leaves))
    # Target: a perturbed copy (as tests/test_mtt.py); the gradient identities hold for any target.
    theta_t = jax.tree.unflatten(treedef, [p + 0.02 * jax.random.normal(k, p.shape) for p, k in zip(leaves, pk)])
    x = jax.random.normal(k_x, (num_syn, HW, HW, 1))
    y = jnp.repeat(jnp.arange(NUM_CLASSES, dtype=jnp.int32), ipc)
    log_lr = jnp.log(jnp.asarray(0.01, jnp.float32))
    idx, keys = make_inner_schedule(k_sched, num_syn, syn_steps, None)
    return model, (x, y, log_lr, theta_0, theta_t, idx, keys)


def image_chunks(model, batch):
    return auto_chunks(model, batch, AUTO_MAX_CHUNKS) if ARGS.image_chunks == "auto" else int(ARGS.image_chunks)


def jax_step_fn(model, mode, unroll, batch):
    # The student exactly as jaxdd's MTT pipeline builds it (jaxdd/pipelines/mtt.py).
    apply_fn = chunked(lambda params, x_NHWC: model.apply({"params": params}, x_NHWC), image_chunks(model, batch))

    def f(x, y, log_lr, theta_0, theta_t, idx, keys):
        return matching_loss_and_grads(mode, apply_fn, x, y, log_lr, theta_0, theta_t, idx, keys,
                                       label_kind="hard", unroll=unroll)

    return jax.jit(f)


# ----------------------------------------------------------------------------------------------
# PyTorch: flat parameters + a functional ConvNet (MTT's ReparamModule approach)
# ----------------------------------------------------------------------------------------------


def torch_layout(theta, width):
    """jaxdd params -> list of (name, torch tensor in torch layout), in forward order."""
    out = []
    for d in range(3):
        k = np.asarray(theta[f"Conv3x3_{d}"]["kernel"])  # (3, 3, Cin, Cout) HWIO
        out.append(np.transpose(k, (3, 2, 0, 1)))  # OIHW
        out.append(np.asarray(theta[f"Conv3x3_{d}"]["bias"]))
        out.append(np.asarray(theta[f"InstanceNorm_{d}"]["scale"]))
        out.append(np.asarray(theta[f"InstanceNorm_{d}"]["bias"]))
    kd = np.asarray(theta["TorchDense_0"]["Dense_0"]["kernel"])  # (H*W*C, K), NHWC flatten order
    hw = int(round((kd.shape[0] // width) ** 0.5))
    kd = kd.reshape(hw, hw, width, NUM_CLASSES).transpose(3, 2, 0, 1).reshape(NUM_CLASSES, -1)  # (K, C*H*W)
    out.append(kd)
    out.append(np.asarray(theta["TorchDense_0"]["Dense_0"]["bias"]))
    return out


class TorchConvNet:
    def __init__(self, shapes, width):
        self.shapes, self.width = shapes, width
        self.sizes = [int(np.prod(s)) for s in shapes]

    def flat(self, arrays, device):
        return torch.cat([torch.as_tensor(np.array(a)).reshape(-1) for a in arrays]).to(device)

    def __call__(self, flat, x_NCHW):
        ps = [t.view(s) for t, s in zip(torch.split(flat, self.sizes), self.shapes)]
        x = x_NCHW
        for d in range(3):
            w, b, g, beta = ps[4 * d: 4 * d + 4]
            x = F.conv2d(x, w, b, padding=3 if (d == 0 and x.shape[-1] == 28) else 1)
            x = F.group_norm(x, self.width, g, beta, eps=1e-5)
            x = F.avg_pool2d(F.relu(x), 2)
        return F.linear(x.flatten(1), ps[12], ps[13])


def torch_mtt(net, x_syn, y, log_lr, start, target, idx_list):
    """MTT's reference outer step: create_graph through N steps, then backprop the loss."""
    x_syn = x_syn.detach().requires_grad_(True)
    log_lr = log_lr.detach().requires_grad_(True)
    lr = log_lr.exp()
    params = [start.detach().clone().requires_grad_(True)]
    for idx in idx_list:
        ce = F.cross_entropy(net(params[-1], x_syn[idx]), y[idx])
        g = torch.autograd.grad(ce, params[-1], create_graph=True)[0]
        params.append(params[-1] - lr * g)
    loss = ((params[-1] - target) ** 2).sum() / ((start - target) ** 2).sum()
    gx, glr = torch.autograd.grad(loss, [x_syn, log_lr])
    return loss.detach(), gx, glr


def torch_tesla(net, x_syn, y, log_lr, start, target, idx_list):
    """TESLA: forward without a graph (store theta_i, G), then per-step VJPs with v (eqs. 3-4)."""
    x_syn = x_syn.detach()
    lr = log_lr.detach().exp()
    theta, G, thetas = start.detach(), torch.zeros_like(start), []
    for idx in idx_list:
        th = theta.requires_grad_(True)
        g = torch.autograd.grad(F.cross_entropy(net(th, x_syn[idx]), y[idx]), th)[0]
        thetas.append(theta.detach())
        G += g
        theta = (theta - lr * g).detach()
    D = ((start - target) ** 2).sum()
    r = theta - target
    loss = (r ** 2).sum() / D
    v = (-2.0 * lr / D) * r
    glr = lr * (-2.0 / D) * torch.dot(r, G)
    gx = torch.zeros_like(x_syn)
    for th_i, idx in zip(thetas, idx_list):
        xs = x_syn.requires_grad_(True)
        th = th_i.requires_grad_(True)
        g = torch.autograd.grad(F.cross_entropy(net(th, xs[idx]), y[idx]), th, create_graph=True)[0]
        gx += torch.autograd.grad(g, xs, grad_outputs=v)[0]
    return loss, gx, glr


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_float64(model, jargs, t_args, torch_impls, args):
    """jaxdd (bptt, and tesla when PyTorch TESLA runs) and PyTorch in float64: the same math
    must agree to ~1e-12, whatever float32 rounding does. Returns per torch impl the agreement
    and the float64 image gradient (the reference for the float32 errors)."""
    out = {}
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        to64 = lambda a: jnp.asarray(a, jnp.float64) if a.dtype == jnp.float32 else a  # noqa: E731
        j64 = jax.tree.map(to64, jargs)
        net, tx, ty, tl, ts, tt, tidx = t_args
        t64 = (net, tx.double(), ty, tl.double(), ts.double(), tt.double(), tidx)
        for name, fn in torch_impls.items():
            loss, g = jax_step_fn(model, name, args.unroll_value, len(jargs[0]))(*j64)
            tl_, tgx, tglr = fn(*t64)
            tgx = tgx.cpu().numpy().transpose(0, 2, 3, 1)
            out[name] = {"gx": np.asarray(g.x_syn_NHWC),
                         "agreement": {"loss_rel": rel(loss, tl_.detach().cpu().numpy()),
                                       "grad_x_rel": rel(g.x_syn_NHWC, tgx),
                                       "grad_log_lr_rel": rel(g.log_lr, tglr.cpu().numpy())}}
    finally:
        jax.config.update("jax_enable_x64", prev)
    return out


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_config(width, syn_steps, ipc, args, tdev):
    model, jargs = make_problem(width, syn_steps, ipc, args.seed)
    x, y, log_lr, theta_0, theta_t, idx, keys = jargs
    jargs = jax.device_put(jargs)

    # PyTorch copies of the same data.
    arrs0, arrsT = torch_layout(theta_0, width), torch_layout(theta_t, width)
    net = TorchConvNet([a.shape for a in arrs0], width)
    t_start, t_target = net.flat(arrs0, tdev), net.flat(arrsT, tdev)
    t_x = torch.as_tensor(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(tdev)
    t_y = torch.as_tensor(np.asarray(y)).long().to(tdev)
    t_loglr = torch.as_tensor(np.asarray(log_lr)).to(tdev)
    t_idx = [torch.as_tensor(np.asarray(i)).long().to(tdev) for i in np.asarray(idx)]
    t_args = (net, t_x, t_y, t_loglr, t_start, t_target, t_idx)

    torch_impls = {"bptt": torch_mtt}
    if "tesla" in args.mode_list and not args.no_torch_tesla:
        torch_impls["tesla"] = torch_tesla

    def torch_ref(mode):
        return "tesla" if mode == "tesla" and "tesla" in torch_impls else "bptt"

    # Compile jaxdd (timed separately) and check equality with PyTorch.
    compiled, compile_s, checks = {}, {}, {}
    torch_out = {}
    for name, fn in torch_impls.items():
        l, gx, glr = fn(*t_args)
        sync(tdev)
        torch_out[name] = (l.cpu().numpy(), gx.cpu().numpy().transpose(0, 2, 3, 1), glr.cpu().numpy())
    ref64 = check_float64(model, jargs, t_args, torch_impls, args) if args.check64 else {}
    for mode in args.mode_list:
        t0 = time.perf_counter()
        compiled[mode] = jax_step_fn(model, mode, args.unroll_value, len(jargs[0])).lower(*jargs).compile()
        compile_s[mode] = time.perf_counter() - t0
        loss, g = jax.block_until_ready(compiled[mode](*jargs))
        tref = torch_ref(mode)
        tl, tgx, tglr = torch_out[tref]
        c = {"against": f"torch_{tref}", "loss_rel": rel(loss, tl),
             "grad_x_rel": rel(g.x_syn_NHWC, tgx), "grad_log_lr_rel": rel(g.log_lr, tglr)}
        exact = not (mode == "tesla" and tref == "bptt")
        if not exact:
            c["note"] = "tesla is first-order: its gradients differ from bptt by design; loss only checked"
        worst = max(c["loss_rel"], c["grad_x_rel"], c["grad_log_lr_rel"]) if exact else c["loss_rel"]
        if tref in ref64:  # float32 errors of each side against the float64 result
            r64 = ref64[tref]
            c["float64_agreement"] = r64["agreement"]
            if exact:
                c["jaxdd_f32_vs_f64_grad_x_rel"] = rel(g.x_syn_NHWC, r64["gx"])
                c["torch_f32_vs_f64_grad_x_rel"] = rel(tgx, r64["gx"])
                if max(r64["agreement"].values()) > TOL64:
                    worst = float("inf")
        if worst > args.tol and exact and "jaxdd_f32_vs_f64_grad_x_rel" in c:
            # The float32 second-order gradient is ill-conditioned (width 64, N 10: both sides
            # ~5e-3 from float64). Accept when float64 agrees and jaxdd's float32 error is no
            # worse than twice PyTorch's own.
            if c["jaxdd_f32_vs_f64_grad_x_rel"] <= max(args.tol, 2 * c["torch_f32_vs_f64_grad_x_rel"]):
                worst, c["accepted_by"] = 0.0, "float64 agreement + jaxdd f32 error <= 2x torch f32 error"
        c["ok"] = worst <= args.tol
        checks[mode] = c
        if not c["ok"]:
            print(f"MISMATCH jaxdd {mode} vs torch width={width} N={syn_steps} ipc={ipc}: {c}", file=sys.stderr)
            raise SystemExit(2)

    # Timing: warm-up, then alternate jaxdd modes and torch implementations each repeat.
    times = {("jax", m): [] for m in args.mode_list}
    times.update({("torch", n): [] for n in torch_impls})
    for rep in range(args.warmup + args.repeats):
        for key in times:
            if key[0] == "jax":
                t0 = time.perf_counter()
                jax.block_until_ready(compiled[key[1]](*jargs))
            else:
                t0 = time.perf_counter()
                torch_impls[key[1]](*t_args)
                sync(tdev)
            dt = time.perf_counter() - t0
            if rep >= args.warmup:
                times[key].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for mode in args.mode_list:
        tref = torch_ref(mode)
        rows.append(dict(
            width=width, syn_steps=syn_steps, ipc=ipc, num_syn=NUM_CLASSES * ipc, mode=mode,
            jaxdd_s=round(med[("jax", mode)], 5), torch_s=round(med[("torch", tref)], 5), torch_impl=tref,
            ratio_jaxdd_over_torch=round(med[("jax", mode)] / med[("torch", tref)], 3),
            jaxdd_min_s=round(min(times[("jax", mode)]), 5), torch_min_s=round(min(times[("torch", tref)]), 5),
            ratio_of_mins=round(min(times[("jax", mode)]) / min(times[("torch", tref)]), 3),
            loadavg_1min_after=round(os.getloadavg()[0], 2),
            jaxdd_compile_s=round(compile_s[mode], 2), jaxdd_image_chunks=image_chunks(model, NUM_CLASSES * ipc),
            jaxdd_times_s=[round(t, 4) for t in times[("jax", mode)]],
            torch_times_s=[round(t, 4) for t in times[("torch", tref)]],
            check=checks[mode]))
        print(f"# w={width} N={syn_steps} ipc={ipc} {mode:5s}: jaxdd {med[('jax', mode)]:.3f}s "
              f"torch[{tref}] {med[('torch', tref)]:.3f}s ratio {rows[-1]['ratio_jaxdd_over_torch']:.2f} "
              f"(compile {compile_s[mode]:.1f}s; loss rel {checks[mode]['loss_rel']:.1e}, "
              f"gx rel {checks[mode]['grad_x_rel']:.1e})", file=sys.stderr, flush=True)
    return rows


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    from _common import cpu_model
    return cpu_model()


def main(args):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores
    torch.set_num_threads(threads)
    tdev = torch.device(args.device)
    if args.device == "cuda":  # full float32 on both sides, so the equality check is meaningful
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        jax.config.update("jax_default_matmul_precision", "highest")
    rows = []
    load0 = [round(v, 2) for v in os.getloadavg()]
    t_all = time.perf_counter()
    for (w, n, ipc) in args.config_list:
        rows.extend(run_config(w, n, ipc, args, tdev))
    import flax
    import jaxlib
    result = dict(
        benchmark="tm_vs_torch", what="MTT outer step: N inner SGD steps + matching loss + grad wrt images, lr",
        device=args.device, device_name=device_name(args.device), jax_backend=jax.default_backend(),
        jax_devices=[str(d) for d in jax.devices()], cores=cores,
        threads=dict(torch_intra_op=torch.get_num_threads(), torch_inter_op=torch.get_num_interop_threads(),
                     xla="XLA:CPU default (all usable cores)" if args.device == "cpu" else None,
                     XLA_FLAGS=os.environ.get("XLA_FLAGS", ""),
                     OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS")),
        versions=dict(python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                      flax=flax.__version__, torch=torch.__version__, numpy=np.__version__),
        setup=dict(model="ConvNet-D3, instance norm (torch GroupNorm(C,C)), 28x28x1 padded by 3, 10 classes",
                   labels="hard", batch_syn="all", augmentation="none", lr=0.01, dtype="float32",
                   theta_target="theta_0 + 0.02 N(0,1) per parameter", unroll=args.unroll_value, jaxdd_conv_impl=args.conv_impl,
                   jaxdd_image_chunks=args.image_chunks,
                   repeats=args.repeats, warmup=args.warmup, statistic="median", tolerance_rel_l2=args.tol,
                   check=("loss and grads (images, log lr) jaxdd vs PyTorch: relative L2 error <= tolerance in "
                          "float32 and in float64 (where the two agree to ~1e-15); float32 errors of both "
                          "against the float64 result are recorded"),
                   quick=bool(args.quick and not args.configs),
                   torch_impl="flat params + functional ConvNet, create_graph=True (MTT reference)"),
        loadavg_1_5_15_start=load0, loadavg_1_5_15_end=[round(v, 2) for v in os.getloadavg()],
        total_s=round(time.perf_counter() - t_all, 1),
        results=rows,
    )
    write("tm_vs_torch", result, args.out)


if __name__ == "__main__":
    main(ARGS)
