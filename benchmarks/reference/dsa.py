"""Reference fixture for DSA: DC's matching loss with differentiable siamese augmentation,
and every DSA family on given parameters, in float64.

Reference: VICO-UoE/DatasetCondensation (commit 53f63a6)
- main.py lines 185-188 (args.dsa): per class, `seed = int(time.time() * 1000) % 100000`,
  then `DiffAugment(img_real, strategy, seed=seed, param)` and the same for img_syn, before
  the gradients of `dc.py`'s matching loss (same net, same loop).
- utils.py `DiffAugment` (aug_mode 'S'): `set_seed_DiffAug` reseeds torch before the
  family choice (`torch.randint` over the '_'-split strategy) and before every parameter
  draw; siamese mode broadcasts the first image's parameters to the batch
  (`theta[:] = theta[0]`, `randb[:] = randb[0]`, ...), so real and synthetic batches of a
  class get one parameter set. `rand_*` as transcribed in _classic_ref.py.
Seeds are fixed here instead of read from the clock: for each family f, seeds whose draw
under the default strategy 'color_crop_cutout_flip_scale_rotate' is f (case `f`), so
every family enters the gradient. The parameters each class drew are saved
(`<case>/c<k>/<name>`), so jaxdd applies the same transform.
`transform/*`: each family alone on 2 images, per-image parameters (non-siamese
`DiffAugment`, seed=-1, as the inner training's `epoch(..., aug=True)` uses it), its
output and the gradient of sum(output * cotangent) w.r.t. the input, on 12x12 images.
Run by hand (needs torch), writes tests/fixtures/reference/dsa.npz:
    PYTHONPATH=. /work/venv-torch/bin/python benchmarks/reference/dsa.py
"""

from __future__ import annotations

import torch

import _classic_ref as R
from dc import dc_matching_loss

K, B, IPC, C, H, WIDTH, DEPTH = 3, 4, 2, 3, 8, 4, 2  # as dc.py
H_T, N_T = 12, 2  # transform checks


def pick_seeds(family, start):
    """K seeds drawing `family`; for flip, class 0 mirrors and the others do not."""
    seeds, seed = [], start
    while len(seeds) < K:
        seed = R.seed_for_family(R.DSA_DEFAULT, family, seed)
        if family == "flip":
            torch.random.manual_seed(seed + 1)  # rand_flip's draw follows the family's
            mirrors = torch.rand(1).item() < 0.5
            if mirrors != (len(seeds) == 0):
                seed += 1
                continue
        seeds.append(seed)
        seed += 1
    return seeds


def main():
    net = R.make_net(0, C, K, WIDTH, DEPTH, "instancenorm", (H, H))
    net.train()
    torch.manual_seed(1)
    x_real = torch.randn(K, B, C, H, H)
    x_syn = torch.randn(K * IPC, C, H, H)
    out = {"x_real": x_real.numpy(), "x_syn": x_syn.numpy(), **R.weights(net)}
    for i, fam in enumerate(R.FAMILIES):
        seeds = pick_seeds(fam, 1000 * (i + 1))
        image_syn = x_syn.clone().requires_grad_(True)
        loss = dc_matching_loss(net, x_real, image_syn, "ours", R.DSA_DEFAULT, seeds, out,
                                f"{fam}/")
        loss.backward()
        out[f"{fam}/loss"] = loss.item()
        out[f"{fam}/grad"] = image_syn.grad.numpy().copy()
        print(fam, seeds, loss.item())

    torch.manual_seed(2)
    x_t = torch.randn(N_T, C, H_T, H_T)
    cot = torch.randn(N_T, C, H_T, H_T)
    out["transform/x"], out["transform/cot"] = x_t.numpy(), cot.numpy()
    param = R.ParamDiffAug()
    for i, fam in enumerate(R.FAMILIES):
        torch.manual_seed(10 + i)
        R.RECORD.clear()
        x = x_t.clone().requires_grad_(True)
        y = R.DiffAugment(x, fam, seed=-1, param=param)
        (y * cot).sum().backward()
        for name, v in R.RECORD:
            if name != "family":
                out[f"transform/{fam}/{name}"] = v
        out[f"transform/{fam}/y"] = y.detach().numpy()
        out[f"transform/{fam}/grad"] = x.grad.numpy().copy()
    R.save("dsa", out)


if __name__ == "__main__":
    main()
