"""Loss and accuracy curves of a run as PNG files, drawn with PIL.

PIL is already a dependency (TFDS images, grid.png); matplotlib would be a large optional
one for two line charts, and a plot that silently disappears when it is missing is worse
than a plain one that is always there. `OUT/plots/loss.png` (the logged training loss, and
the learned lr where a method learns one) and `OUT/plots/accuracy.png` (the periodic
validation and test accuracy, the best iteration marked, the final test accuracies as
horizontal lines) are written at the end of a run, atomically.
"""

from __future__ import annotations

import io
import math
import os
from typing import Mapping, Sequence

from jaxdd import safeio
from jaxdd.run.metrics import read_jsonl

W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 36, 56
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
          (140, 86, 75)]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.1e}"


def line_chart(path: str, title: str, xlabel: str, series: Mapping[str, Sequence[tuple]],
               hlines: Mapping[str, float] | None = None,
               marks: Mapping[str, tuple[float, float]] | None = None) -> None:
    """A PNG line chart: `series` label -> [(x, y), ...]; `hlines` label -> y (dashed);
    `marks` label -> (x, y) (a ring). Non-finite points are dropped."""
    from PIL import Image, ImageDraw, ImageFont

    series = {k: [(float(x), float(y)) for x, y in v if math.isfinite(float(y))]
              for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    hlines = {k: float(v) for k, v in (hlines or {}).items() if math.isfinite(float(v))}
    xs = [x for v in series.values() for x, _ in v] or [0.0, 1.0]
    ys = [y for v in series.values() for _, y in v] + list(hlines.values()) or [0.0, 1.0]
    xt, yt = _nice_ticks(min(xs), max(xs)), _nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def px(x, y):
        return (LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT),
                H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM))

    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((LEFT, 10), title, fill="black", font=font)
    d.text(((W + LEFT) // 2 - 20, H - 22), xlabel, fill="black", font=font)
    for v in xt:
        p = px(v, y0)
        d.line([p, (p[0], TOP)], fill=(230, 230, 230))
        d.text((p[0] - 10, H - BOTTOM + 6), _fmt(v), fill="black", font=font)
    for v in yt:
        p = px(x0, v)
        d.line([p, (W - RIGHT, p[1])], fill=(230, 230, 230))
        d.text((6, p[1] - 6), _fmt(v), fill="black", font=font)
    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    legend = []
    for i, (label, pts) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        if len(pts) > 1:
            d.line([px(*p) for p in pts], fill=c, width=2)
        for p in pts if len(pts) <= 60 else ():
            q = px(*p)
            d.ellipse([q[0] - 2, q[1] - 2, q[0] + 2, q[1] + 2], fill=c)
        legend.append((label, c))
    for j, (label, yv) in enumerate(hlines.items()):
        c = COLORS[(len(series) + j) % len(COLORS)]
        _, yy = px(x0, yv)
        for xx in range(LEFT, W - RIGHT, 12):
            d.line([(xx, yy), (min(xx + 6, W - RIGHT), yy)], fill=c, width=2)
        legend.append((f"{label} ({_fmt(yv)})", c))
    for label, (mx, my) in (marks or {}).items():
        q = px(mx, my)
        d.ellipse([q[0] - 6, q[1] - 6, q[0] + 6, q[1] + 6], outline="black", width=2)
        legend.append((f"{label} (iteration {int(mx)}, {_fmt(my)})", (0, 0, 0)))
    for k, (label, c) in enumerate(legend):
        ly = TOP + 8 + 14 * k
        d.line([(W - RIGHT - 230, ly + 5), (W - RIGHT - 212, ly + 5)], fill=c, width=3)
        d.text((W - RIGHT - 206, ly), label, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    safeio.write_bytes(path, buf.getvalue())


def write_run_plots(out_dir: str, finals: Mapping[str, float] | None = None) -> list[str]:
    """OUT/plots/loss.png from run/metrics.jsonl and OUT/plots/accuracy.png from
    run/eval.jsonl (and `finals`: set name -> final test accuracy); returns the paths written."""
    train = [m for m in read_jsonl(os.path.join(out_dir, "run", "metrics.jsonl"))
             if not m.get("nonfinite")]
    evals = read_jsonl(os.path.join(out_dir, "run", "eval.jsonl"))
    plots = os.path.join(out_dir, "plots")
    written = []
    if any("loss" in m for m in train):
        safeio.makedirs(plots)
        series = {"loss": [(m["iteration"], m["loss"]) for m in train if "loss" in m]}
        path = os.path.join(plots, "loss.png")
        line_chart(path, "training loss", "iteration", series)
        written.append(path)
        if any(isinstance(m.get("lr"), float) for m in train):
            path = os.path.join(plots, "lr.png")
            line_chart(path, "learned lr", "iteration",
                       {"lr": [(m["iteration"], m["lr"]) for m in train
                               if isinstance(m.get("lr"), float)]})
            written.append(path)
    if evals or finals:
        safeio.makedirs(plots)
        series = {"val accuracy": [(e["iteration"], e["val_accuracy"]) for e in evals],
                  "test accuracy": [(e["iteration"], e["test_accuracy"]) for e in evals]}
        marks = {}
        if evals:
            best = max(evals, key=lambda e: (e["val_accuracy"], -e["iteration"]))
            marks["best on val"] = (best["iteration"], best["val_accuracy"])
        path = os.path.join(plots, "accuracy.png")
        line_chart(path, "accuracy during distillation (final: test, full protocol)",
                   "iteration", series, {f"final {k}": v for k, v in (finals or {}).items()},
                   marks)
        written.append(path)
    return written
