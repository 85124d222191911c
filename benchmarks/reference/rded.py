"""Reference fixture for RDED's crop scoring and selection (one class), PyTorch float64.

Written as the reference code computes it (LINs-lab/RDED, read for the operations, no code
copied):
  * `synthesize/main.py` `init_images`: each real image (ToTensor, [0, 1]) goes through
    `MultiRandomCrop(num_crop, size=input_size, factor)` then `normalize` (ImageNet mean /
    std); one class = one loader batch of `mipc` images; `selector(ipc * factor^2, ...)`,
    then `mix_images(images, input_size, factor, ipc)`.
  * `synthesize/utils.py` `MultiRandomCrop.forward`: num_crop independent
    `RandomResizedCrop(size // factor, ratio=(1, 1), antialias=True)` patches (scale
    (0.08, 1), bilinear); `pad`: the patch centred on a zero canvas of input_size (top =
    (H - h) // 2); `cross_entropy`: -log(softmax(logits)[label]); `selector`: patches
    permuted to (m, mipc) order, teacher (eval) on the padded patches, scores reshaped
    (m, mipc), argmin over the m crops of each image, then argsort ascending of those
    minima, first n; `mix_images`: tile k = i * factor + j of image t is selected patch
    k * ipc + t, `F.interpolate` (nearest) to the tile size (here the patch size: identity).

The RandomResizedCrop boxes are drawn with `RandomResizedCrop.get_params` (torch RNG),
saved, and applied with `torchvision.transforms.functional.resized_crop(..., antialias=
True)`, the call RandomResizedCrop.forward makes. jaxdd's own box sampler cannot match
torch's draws; the test passes these boxes to `select_from_boxes`.

Tiny setup: a depth-2 width-4 BN ConvNet teacher (sm_common.py), input 16 x 16, factor 2
(8 x 8 patches scored on a zero 16 x 16 canvas), num_crop 3, mipc 6 images of class 1,
ipc 1 (4 patches kept).

Run by hand (needs torch and torchvision):
  PYTHONPATH=. /work/venv-torch/bin/python benchmarks/reference/rded.py
writes tests/fixtures/reference/rded.npz; tests/test_reference_sm.py compares jaxdd with it.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms
from torchvision.transforms import functional as TF

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sm_common import make_teacher, teacher_arrays  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "reference",
                   "rded.npz")
SIZE, FACTOR, NUM_CROP, MIPC, IPC, LABEL = 16, 2, 3, 6, 1, 1
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def pad(x, size):
    v, h = size - x.size(2), size - x.size(3)
    return F.pad(x, (h // 2, h - h // 2, v // 2, v - v // 2))


def main():
    torch.set_default_dtype(torch.float64)
    net = make_teacher(seed=4, depth=2, hw=SIZE)
    with torch.no_grad():  # a confident teacher: scores spread well beyond rounding
        net.classifier.weight.mul_(10.0)
    torch.manual_seed(5)
    pool = torch.rand(MIPC, 3, SIZE, SIZE)  # ToTensor images of one class
    normalize = transforms.Normalize(mean=MEAN, std=STD)
    boxes = np.zeros((MIPC, NUM_CROP, 4), np.int64)
    patches = []
    for p in range(MIPC):  # MultiRandomCrop + normalize, per image
        crops = []
        for m in range(NUM_CROP):
            i, j, h, w = transforms.RandomResizedCrop.get_params(pool[p], scale=(0.08, 1.0),
                                                                 ratio=(1.0, 1.0))
            boxes[p, m] = (i, j, h, w)
            crops.append(TF.resized_crop(pool[p], i, j, h, w, [SIZE // FACTOR] * 2,
                                         antialias=True))
        patches.append(normalize(torch.stack(crops, 0)))
    images = torch.stack(patches, 0)  # [mipc, m, 3, s, s]
    labels = torch.full((MIPC,), LABEL)

    # selector
    n = IPC * FACTOR ** 2
    with torch.no_grad():
        s = images.shape
        flat = images.permute(1, 0, 2, 3, 4).reshape(s[0] * s[1], s[2], s[3], s[4])
        lab = labels.repeat(s[1])
        logits = net(pad(flat, SIZE))
        ce = -torch.log(F.softmax(logits, dim=1).gather(1, lab.view(-1, 1)))[:, 0]
        ce = ce.reshape(s[1], s[0])  # [m, mipc]
        index = torch.argmin(ce, 0)
        best = ce[index, torch.arange(s[0])]
        kept = flat.reshape(s[1], s[0], *flat.shape[1:])[index, torch.arange(s[0])]
    order = torch.argsort(best, descending=False)[:n]
    selected = kept[order]

    # mix_images
    t = SIZE // FACTOR
    rem = SIZE % FACTOR
    mixed = torch.zeros((IPC, 3, SIZE, SIZE))
    k, h_loc = 0, 0
    for i in range(FACTOR):
        h_r = t + 1 if i < rem else t
        w_loc = 0
        for j in range(FACTOR):
            w_r = t + 1 if j < rem else t
            mixed[:, :, h_loc:h_loc + h_r, w_loc:w_loc + w_r] = F.interpolate(
                selected[k * IPC:(k + 1) * IPC], size=(h_r, w_r))
            w_loc += w_r
            k += 1
        h_loc += h_r

    np.savez_compressed(OUT, **teacher_arrays(net), pool_NCHW=pool.numpy(), mean=np.array(MEAN),
                        std=np.array(STD), boxes=boxes, label=np.array(LABEL),
                        ce_MxP=ce.numpy(), best_m=index.numpy(), best_ce=best.numpy(),
                        selected=order.numpy(), mixed_NCHW=mixed.numpy(),
                        setup=np.array([SIZE, FACTOR, NUM_CROP, MIPC, IPC]))
    print(f"wrote {os.path.normpath(OUT)}: best crop per image {index.tolist()}, "
          f"scores {np.round(best.numpy(), 4).tolist()}, selected {order.tolist()}")


if __name__ == "__main__":
    main()
