"""Reference fixture for DM (distribution matching): loss, gradient w.r.t. the synthetic
images and one image update, in float64, from a PyTorch transcription of the reference.

Reference: VICO-UoE/DatasetCondensation (commit 53f63a6) main_DM.py lines 138-194
('Train synthetic data'): a fresh net in train mode, parameters frozen, `embed` = the
flattened features (networks.py `ConvNet.embed`);
- ConvNet (instancenorm, `'BN' not in args.model`): per class c, optional siamese
  DiffAugment of real and syn with one seed, `output_real = embed(img_real).detach()`,
  `loss += sum((mean(output_real, 0) - mean(output_syn, 0))**2)`;
- ConvNetBN: the (augmented) classes concatenated, ONE embed of all real and one of all
  synthetic images (batch statistics over all classes), then the same sum of squared
  differences of per-class means (reshape (K, B, -1) / (K, ipc, -1), mean over dim 1);
- optimizer_img = SGD(lr_img=1.0, momentum=0.5), one step.
Cases: `in` (ConvNet d2 w4, no augmentation), `in_dsa` (the same with the default strategy
'color_crop_cutout_flip_scale_rotate' and seeds fixed so that the classes draw rotate,
scale and crop; the drawn parameters are saved), `bn` (ConvNetBN d2 w4, no augmentation).
Run by hand (needs torch), writes tests/fixtures/reference/dm.npz:
    PYTHONPATH=. /work/venv-torch/bin/python benchmarks/reference/dm.py
"""

from __future__ import annotations

import torch

import _classic_ref as R

K, B, IPC, C, H, WIDTH, DEPTH = 3, 4, 2, 3, 8, 4, 2
LR_IMG, MOMENTUM = 1.0, 0.5  # main_DM.py --lr_img default; optimizer_img momentum
DSA_FAMILIES = ("rotate", "scale", "crop")  # what classes 0, 1, 2 draw in case in_dsa


def dm_loss(net, x_real, image_syn, bn, strategy="none", seeds=None, out=None, prefix=""):
    num_classes, ipc = x_real.shape[0], image_syn.shape[0] // x_real.shape[0]
    batch_real = x_real.shape[1]
    param = R.ParamDiffAug()
    embed = net.embed
    loss = torch.tensor(0.0)
    images_real_all, images_syn_all = [], []
    for c in range(num_classes):
        img_real = x_real[c]
        img_syn = image_syn[c * ipc:(c + 1) * ipc].reshape((ipc, *image_syn.shape[1:]))
        if strategy != "none":
            img_real, img_syn = R.siamese_pair(img_real, img_syn, strategy, seeds[c], param,
                                               f"{prefix}c{c}", out)
        if not bn:
            output_real = embed(img_real).detach()
            output_syn = embed(img_syn)
            loss += torch.sum((torch.mean(output_real, dim=0) - torch.mean(output_syn, dim=0)) ** 2)
        else:
            images_real_all.append(img_real)
            images_syn_all.append(img_syn)
    if bn:
        images_real_all = torch.cat(images_real_all, dim=0)
        images_syn_all = torch.cat(images_syn_all, dim=0)
        output_real = embed(images_real_all).detach()
        output_syn = embed(images_syn_all)
        loss += torch.sum((torch.mean(output_real.reshape(num_classes, batch_real, -1), dim=1)
                           - torch.mean(output_syn.reshape(num_classes, ipc, -1), dim=1)) ** 2)
    return loss


def main():
    def loss_fn(net, norm, x_real, image_syn, strategy, seeds, out, prefix):
        return dm_loss(net, x_real, image_syn, norm == "batchnorm", strategy, seeds, out,
                       prefix), {}

    R.image_step_fixture("dm", (K, B, IPC, C, H, WIDTH, DEPTH),
                         (("in", "instancenorm", True), ("in_dsa", "instancenorm", True),
                          ("bn", "batchnorm", True)),
                         "in_dsa", DSA_FAMILIES, LR_IMG, MOMENTUM, loss_fn)


if __name__ == "__main__":
    main()
