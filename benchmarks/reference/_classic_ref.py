"""Shared pieces of the classic-family reference scripts (dc, dsa, dm, datadam): PyTorch,
float64, written as the reference code is (never imported by jaxdd or its tests).

Follows VICO-UoE/DatasetCondensation (commit 53f63a6):
- `ConvNet`: networks.py `ConvNet` (`_make_layers`: depth x [Conv2d 3x3 (padding 3 on a
  1-channel first layer, else 1) -> norm -> ReLU -> AvgPool2d(2)] -> flatten -> Linear;
  'instancenorm' = GroupNorm(C, C, affine), 'batchnorm' = BatchNorm2d(C)); `embed` = the
  flattened features. DataDistillation/DataDAM networks.py has the same layers, its
  `forward` returns (emb, logits) (`forward_dam`).
- `distance_wb`, `match_loss`: utils.py (lines 218-272).
- `ParamDiffAug`, `set_seed_DiffAug`, `DiffAugment` (aug_mode 'S'), `rand_*`: utils.py
  (lines 474-650); DataDAM's utils.py copies them (only `.clone()` added).
  Two changes, both needed for a float64 fixture and neither changes a value:
  * theta of rand_scale / rand_rotate is built in the default dtype (float64); the
    reference writes `torch.tensor(theta, dtype=torch.float)`, and grid_sample refuses a
    float32 grid with a float64 image.
  * every drawn parameter is appended to `RECORD` (after the siamese broadcast, i.e. the
    values actually applied), so that jaxdd's transforms can be given the same ones.
  affine_grid/grid_sample are called without align_corners, as the reference (torch 1.2,
  its requirements.txt, behaved as align_corners=True; torch >= 1.3 defaults to False):
  for the square images used here both conventions give the same resampling.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
warnings.filterwarnings("ignore")  # align_corners / meshgrid indexing notices

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "reference")
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"


# ------------------------------------------------------------------ networks.py ConvNet
class ConvNet(nn.Module):
    def __init__(self, channel, num_classes, net_width, net_depth, net_norm, im_size):
        super().__init__()
        layers, in_channels = [], channel
        shape_feat = [channel, im_size[0], im_size[1]]
        if im_size[0] == 28:
            shape_feat = [channel, 32, 32]
        for d in range(net_depth):
            layers += [nn.Conv2d(in_channels, net_width, kernel_size=3,
                                 padding=3 if channel == 1 and d == 0 else 1)]
            shape_feat[0] = net_width
            if net_norm == "instancenorm":
                layers += [nn.GroupNorm(net_width, net_width, affine=True)]
            elif net_norm == "batchnorm":
                layers += [nn.BatchNorm2d(net_width, affine=True)]
            layers += [nn.ReLU(inplace=True)]
            in_channels = net_width
            layers += [nn.AvgPool2d(kernel_size=2, stride=2)]
            shape_feat[1] //= 2
            shape_feat[2] //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(shape_feat[0] * shape_feat[1] * shape_feat[2], num_classes)

    def forward(self, x):
        out = self.features(x)
        return self.classifier(out.view(out.size(0), -1))

    def embed(self, x):
        out = self.features(x)
        return out.view(out.size(0), -1)

    def forward_dam(self, x):  # DataDAM networks.py ConvNet.forward: (emb, logits)
        out = self.features(x)
        emb = out.reshape(out.size(0), -1)
        return emb, self.classifier(emb)


def make_net(seed, channel, num_classes, width, depth, norm, im_size):
    torch.manual_seed(seed)  # the reference seeds from the clock (get_network)
    return ConvNet(channel, num_classes, width, depth, norm, im_size)


def weights(net):
    """state dict (torch layout, float64) as 'w/<name>' entries of the npz."""
    return {f"w/{k}": v.detach().numpy().copy() for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}


# ------------------------------------------------------------------ utils.py match_loss
def distance_wb(gwr, gws):
    shape = gwr.shape
    if len(shape) == 4:  # conv, out*in*h*w
        gwr = gwr.reshape(shape[0], shape[1] * shape[2] * shape[3])
        gws = gws.reshape(shape[0], shape[1] * shape[2] * shape[3])
    elif len(shape) == 3:  # layernorm, C*h*w
        gwr = gwr.reshape(shape[0], shape[1] * shape[2])
        gws = gws.reshape(shape[0], shape[1] * shape[2])
    elif len(shape) == 1:  # batchnorm/instancenorm, C; groupnorm x, bias
        return torch.tensor(0.0)
    return torch.sum(1 - torch.sum(gwr * gws, dim=-1)
                     / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def match_loss(gw_syn, gw_real, dis_metric):
    dis = torch.tensor(0.0)
    if dis_metric == "ours":
        for ig in range(len(gw_real)):
            dis += distance_wb(gw_real[ig], gw_syn[ig])
    elif dis_metric in ("mse", "cos"):
        gw_real_vec = torch.cat([g.reshape((-1)) for g in gw_real], dim=0)
        gw_syn_vec = torch.cat([g.reshape((-1)) for g in gw_syn], dim=0)
        if dis_metric == "mse":
            dis = torch.sum((gw_syn_vec - gw_real_vec) ** 2)
        else:
            dis = 1 - torch.sum(gw_real_vec * gw_syn_vec, dim=-1) / (
                torch.norm(gw_real_vec, dim=-1) * torch.norm(gw_syn_vec, dim=-1) + 0.000001)
    else:
        raise ValueError(dis_metric)
    return dis


# ------------------------------------------------------------------ utils.py DiffAugment
RECORD: list = []  # (name, values) of every draw, in order


class ParamDiffAug:
    def __init__(self):
        self.aug_mode = "S"
        self.prob_flip = 0.5
        self.ratio_scale = 1.2
        self.ratio_rotate = 15.0
        self.ratio_crop_pad = 0.125
        self.ratio_cutout = 0.5
        self.brightness = 1.0
        self.saturation = 2.0
        self.contrast = 0.5
        self.latestseed = -1
        self.Siamese = False


def set_seed_DiffAug(param):
    if param.latestseed == -1:
        return
    torch.random.manual_seed(param.latestseed)
    param.latestseed += 1


def DiffAugment(x, strategy="", seed=-1, param=None):
    if strategy in ("None", "none", ""):
        return x
    param.Siamese = seed != -1
    param.latestseed = seed
    pbties = strategy.split("_")
    set_seed_DiffAug(param)
    p = pbties[torch.randint(0, len(pbties), size=(1,)).item()]
    RECORD.append(("family", FAMILIES.index(p)))
    for f in AUGMENT_FNS[p]:
        x = f(x, param)
    return x.contiguous()


def rand_scale(x, param):
    ratio = param.ratio_scale
    set_seed_DiffAug(param)
    sx = torch.rand(x.shape[0]) * (ratio - 1.0 / ratio) + 1.0 / ratio
    set_seed_DiffAug(param)
    sy = torch.rand(x.shape[0]) * (ratio - 1.0 / ratio) + 1.0 / ratio
    theta = [[[sx[i], 0, 0], [0, sy[i], 0]] for i in range(x.shape[0])]
    theta = torch.tensor(theta)  # reference: dtype=torch.float (module docstring)
    if param.Siamese:
        theta[:] = theta[0]
    RECORD.append(("sx", theta[:, 0, 0].numpy().copy()))
    RECORD.append(("sy", theta[:, 1, 1].numpy().copy()))
    grid = F.affine_grid(theta, x.shape)
    return F.grid_sample(x, grid)


def rand_rotate(x, param):
    ratio = param.ratio_rotate
    set_seed_DiffAug(param)
    theta = (torch.rand(x.shape[0]) - 0.5) * 2 * ratio / 180 * float(np.pi)
    angle = theta.clone()
    theta = [[[torch.cos(theta[i]), torch.sin(-theta[i]), 0],
              [torch.sin(theta[i]), torch.cos(theta[i]), 0]] for i in range(x.shape[0])]
    theta = torch.tensor(theta)  # reference: dtype=torch.float (module docstring)
    if param.Siamese:
        theta[:] = theta[0]
        angle[:] = angle[0]
    RECORD.append(("angle", angle.numpy().copy()))
    grid = F.affine_grid(theta, x.shape)
    return F.grid_sample(x, grid)


def rand_flip(x, param):
    prob = param.prob_flip
    set_seed_DiffAug(param)
    randf = torch.rand(x.size(0), 1, 1, 1)
    if param.Siamese:
        randf[:] = randf[0]
    RECORD.append(("randf", randf.reshape(-1).numpy().copy()))
    return torch.where(randf < prob, x.flip(3), x)


def rand_brightness(x, param):
    ratio = param.brightness
    set_seed_DiffAug(param)
    randb = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype)
    if param.Siamese:
        randb[:] = randb[0]
    RECORD.append(("randb", randb.reshape(-1).numpy().copy()))
    return x + (randb - 0.5) * ratio


def rand_saturation(x, param):
    ratio = param.saturation
    x_mean = x.mean(dim=1, keepdim=True)
    set_seed_DiffAug(param)
    rands = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype)
    if param.Siamese:
        rands[:] = rands[0]
    RECORD.append(("rands", rands.reshape(-1).numpy().copy()))
    return (x - x_mean) * (rands * ratio) + x_mean


def rand_contrast(x, param):
    ratio = param.contrast
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    set_seed_DiffAug(param)
    randc = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype)
    if param.Siamese:
        randc[:] = randc[0]
    RECORD.append(("randc", randc.reshape(-1).numpy().copy()))
    return (x - x_mean) * (randc + ratio) + x_mean


def rand_crop(x, param):
    ratio = param.ratio_crop_pad
    shift_x, shift_y = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    set_seed_DiffAug(param)
    translation_x = torch.randint(-shift_x, shift_x + 1, size=[x.size(0), 1, 1])
    set_seed_DiffAug(param)
    translation_y = torch.randint(-shift_y, shift_y + 1, size=[x.size(0), 1, 1])
    if param.Siamese:
        translation_x[:] = translation_x[0]
        translation_y[:] = translation_y[0]
    RECORD.append(("translation_x", translation_x.reshape(-1).numpy().copy()))
    RECORD.append(("translation_y", translation_y.reshape(-1).numpy().copy()))
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long), torch.arange(x.size(2), dtype=torch.long),
        torch.arange(x.size(3), dtype=torch.long))
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def rand_cutout(x, param):
    ratio = param.ratio_cutout
    cutout_size = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    set_seed_DiffAug(param)
    offset_x = torch.randint(0, x.size(2) + (1 - cutout_size[0] % 2), size=[x.size(0), 1, 1])
    set_seed_DiffAug(param)
    offset_y = torch.randint(0, x.size(3) + (1 - cutout_size[1] % 2), size=[x.size(0), 1, 1])
    if param.Siamese:
        offset_x[:] = offset_x[0]
        offset_y[:] = offset_y[0]
    RECORD.append(("offset_x", offset_x.reshape(-1).numpy().copy()))
    RECORD.append(("offset_y", offset_y.reshape(-1).numpy().copy()))
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long), torch.arange(cutout_size[0], dtype=torch.long),
        torch.arange(cutout_size[1], dtype=torch.long))
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


AUGMENT_FNS = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "crop": [rand_crop],
    "cutout": [rand_cutout],
    "flip": [rand_flip],
    "scale": [rand_scale],
    "rotate": [rand_rotate],
}


def siamese_pair(x_real, x_syn, strategy, seed, param, prefix, out):
    """The reference's per-class pair: DiffAugment(real, seed) then DiffAugment(syn, seed).

    Stores the draws applied to the synthetic batch under `prefix` in `out` (the real
    batch got the same ones: checked)."""
    RECORD.clear()
    a_real = DiffAugment(x_real, strategy, seed=seed, param=param)
    rec_real = list(RECORD)
    RECORD.clear()
    a_syn = DiffAugment(x_syn, strategy, seed=seed, param=param)
    rec_syn = list(RECORD)
    assert [n for n, _ in rec_real] == [n for n, _ in rec_syn]
    for (n, vr), (_, vs) in zip(rec_real, rec_syn):
        if n != "family":  # siamese: one parameter set for both batches
            assert np.all(vr == vr[:1]) and np.all(vs == vs[:1]) and vr[0] == vs[0], n
            out[f"{prefix}/{n}"] = np.asarray(vs[0])
        else:
            assert vr == vs
            out[f"{prefix}/{n}"] = np.asarray(vs)
    return a_real, a_syn


def seed_for_family(strategy, family, start):
    """The first seed >= start for which the reference's 'S' mode picks `family`."""
    pbties = strategy.split("_")
    seed = start
    while True:
        torch.random.manual_seed(seed)
        if pbties[torch.randint(0, len(pbties), size=(1,)).item()] == family:
            return seed
        seed += 1


def save(name, arrays):
    os.makedirs(FIXTURES, exist_ok=True)
    path = os.path.abspath(os.path.join(FIXTURES, f"{name}.npz"))
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(arrays)} arrays)")


def image_step_fixture(name, sizes, cases, dsa_case, dsa_families, lr_img, momentum, loss_fn):
    """The DM/DataDAM fixture run: random real (K, B) and synthetic (K*IPC) images (seed 1),
    then per (case, norm) a frozen ConvNet in train mode (seed 0; its weights stored, except for
    `dsa_case`, which reuses the previous case's network and draws `dsa_families[c]` for class
    c), one SGD(lr_img, momentum) step on the images of
    `loss_fn(net, norm, x_real, image_syn, strategy, seeds, out, prefix) -> (loss, extras)`;
    stores loss, extras, the image gradient and, where the case says so, the new images, and
    saves `name`.npz."""
    k, b, ipc, c, h, width, depth = sizes
    torch.manual_seed(1)
    x_real = torch.randn(k, b, c, h, h)
    x_syn = torch.randn(k * ipc, c, h, h)
    out = {"x_real": x_real.numpy(), "x_syn": x_syn.numpy(), "lr_img": lr_img,
           "momentum": momentum}
    for case, norm, keep_x_new in cases:
        net = make_net(0, c, k, width, depth, norm, (h, h))
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        seeds = None
        if case == dsa_case:
            seeds = [seed_for_family(DSA_DEFAULT, f, 100 * (i + 1))
                     for i, f in enumerate(dsa_families)]
        else:
            out.update({f"{case}/{key}": v for key, v in weights(net).items()})
        image_syn = x_syn.clone().requires_grad_(True)
        optimizer_img = torch.optim.SGD([image_syn], lr=lr_img, momentum=momentum)
        optimizer_img.zero_grad()
        loss, extras = loss_fn(net, norm, x_real, image_syn, DSA_DEFAULT if seeds else "none",
                               seeds, out, f"{case}/")
        loss.backward()
        out[f"{case}/loss"] = loss.item()
        out.update({f"{case}/{key}": v for key, v in extras.items()})
        out[f"{case}/grad"] = image_syn.grad.numpy().copy()
        optimizer_img.step()
        if keep_x_new:
            out[f"{case}/x_new"] = image_syn.detach().numpy().copy()
        print(case, seeds, loss.item(), extras)
    save(name, out)
