"""Reference fixture for DC (gradient matching): loss, gradient w.r.t. the synthetic images
and one image update, in float64, from a PyTorch transcription of the reference.

Reference: VICO-UoE/DatasetCondensation (commit 53f63a6)
- main.py lines 177-204 ('update synthetic data'): for every class c, CE (mean) of the
  real batch of c with label c -> `torch.autograd.grad` over all net parameters, detached;
  CE of the synthetic images of c -> grad with create_graph=True;
  `loss += match_loss(gw_syn, gw_real, args)`; then `optimizer_img` = SGD(lr_img=0.1,
  momentum=0.5) takes one step on the images.
- utils.py `match_loss` / `distance_wb` (lines 218-272): 'ours' sums over parameter
  tensors, per output unit, 1 - cos (biases and norm affines contribute 0); 'mse' and 'cos'
  on the concatenated flattened gradients.
- main.py lines 157-175 (BN nets): `BNSizePC = 16` real images per class, one train-mode
  forward (running statistics: momentum 0.1, UNBIASED running variance), then every
  BatchNorm in eval mode for the matching: case `bn` (ConvNetBN; `bn_init/` is the fresh
  net, `bn/` the refreshed one).
- networks.py `ConvNet` with net_norm 'instancenorm' (the default ConvNet), here width 4,
  depth 2, on 8x8 RGB images (3 channels: the 1-channel first layer pads 3, which jaxdd
  ties to 28 px inputs instead; both agree on the 28 px grey datasets).
Run by hand (needs torch), writes tests/fixtures/reference/dc.npz:
    PYTHONPATH=. /work/venv-torch/bin/python benchmarks/reference/dc.py
Checked by tests/test_reference_classic.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from _classic_ref import ParamDiffAug, make_net, match_loss, save, siamese_pair, weights

K, B, IPC, C, H, WIDTH, DEPTH = 3, 4, 2, 3, 8, 4, 2
LR_IMG, MOMENTUM = 0.1, 0.5  # main.py --lr_img default; optimizer_img momentum


def dc_matching_loss(net, x_real, image_syn, dis_metric, strategy="none", seeds=None,
                     out=None, prefix=""):
    """main.py 'update synthetic data' for one outer step (classes in order)."""
    num_classes, ipc = x_real.shape[0], image_syn.shape[0] // x_real.shape[0]
    net_parameters = list(net.parameters())
    criterion = nn.CrossEntropyLoss()
    param = ParamDiffAug()
    loss = torch.tensor(0.0)
    for c in range(num_classes):
        img_real = x_real[c]
        lab_real = torch.ones((img_real.shape[0],), dtype=torch.long) * c
        img_syn = image_syn[c * ipc:(c + 1) * ipc].reshape((ipc, *image_syn.shape[1:]))
        lab_syn = torch.ones((ipc,), dtype=torch.long) * c
        if strategy != "none":  # args.dsa: one seed per class, shared by real and syn
            img_real, img_syn = siamese_pair(img_real, img_syn, strategy, seeds[c], param,
                                             f"{prefix}c{c}", out)
        output_real = net(img_real)
        loss_real = criterion(output_real, lab_real)
        gw_real = torch.autograd.grad(loss_real, net_parameters)
        gw_real = list((_.detach().clone() for _ in gw_real))
        output_syn = net(img_syn)
        loss_syn = criterion(output_syn, lab_syn)
        gw_syn = torch.autograd.grad(loss_syn, net_parameters, create_graph=True)
        loss += match_loss(gw_syn, gw_real, dis_metric)
    return loss


def main():
    net = make_net(0, C, K, WIDTH, DEPTH, "instancenorm", (H, H))
    net.train()
    torch.manual_seed(1)
    x_real = torch.randn(K, B, C, H, H)
    x_syn = torch.randn(K * IPC, C, H, H)
    out = {"x_real": x_real.numpy(), "x_syn": x_syn.numpy(), **weights(net),
           "lr_img": LR_IMG, "momentum": MOMENTUM}
    for metric in ("ours", "mse", "cos"):
        image_syn = x_syn.clone().requires_grad_(True)
        optimizer_img = torch.optim.SGD([image_syn], lr=LR_IMG, momentum=MOMENTUM)
        optimizer_img.zero_grad()
        loss = dc_matching_loss(net, x_real, image_syn, metric)
        loss.backward()
        out[f"{metric}/loss"] = loss.item()
        out[f"{metric}/grad"] = image_syn.grad.numpy().copy()
        optimizer_img.step()
        if metric == "ours":  # the default distance: also the updated images
            out[f"{metric}/x_new"] = image_syn.detach().numpy().copy()
        print(metric, loss.item())
    # ConvNetBN (main.py lines 157-175): a train-mode forward of BNSizePC = 16 real images
    # per class (here the B = 4 of the matching batch, as jaxdd takes the first
    # min(16, B)) refreshes the running statistics (momentum 0.1, unbiased running
    # variance), then every BatchNorm is put in eval mode for the matching.
    net = make_net(0, C, K, WIDTH, DEPTH, "batchnorm", (H, H))
    net.train()
    img_real = torch.cat([x_real[c] for c in range(K)], dim=0)
    net(img_real)
    for module in net.modules():
        if "BatchNorm" in module._get_name():
            module.eval()
    out.update({f"bn/{k}": v for k, v in weights(net).items()})  # stats after the refresh
    init = make_net(0, C, K, WIDTH, DEPTH, "batchnorm", (H, H))  # the same fresh net
    out.update({f"bn_init/{k}": v for k, v in weights(init).items()})
    image_syn = x_syn.clone().requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=LR_IMG, momentum=MOMENTUM)
    optimizer_img.zero_grad()
    loss = dc_matching_loss(net, x_real, image_syn, "ours")
    loss.backward()
    out["bn/loss"] = loss.item()
    out["bn/grad"] = image_syn.grad.numpy().copy()
    optimizer_img.step()
    out["bn/x_new"] = image_syn.detach().numpy().copy()
    print("bn", loss.item())
    save("dc", out)


if __name__ == "__main__":
    main()
