"""Reference fixture for DataDAM (attention matching): loss (attention and output terms),
gradient w.r.t. the synthetic images and one image update, in float64, from a PyTorch
transcription of the reference.

Reference: DataDistillation/DataDAM (commit 0f6ea09)
- main_DataDAM.py lines 151-177: forward hooks on every nn.ReLU of `net.features` keep the
  post-ReLU (pre-pool) activation of each block (`op.clone()`).
- main_DataDAM.py lines 231-321: fresh net, train mode, parameters frozen; per class
  optional siamese DiffAugment (one seed for real and syn); all real images concatenated ->
  ONE forward (`net(images_real_all)[0].detach()`, networks.py forward returns (emb,
  logits)), all synthetic images -> one forward; for every hooked layer but the last,
  `get_attention(act, param=1, exp=1, norm='l2')` and `100 * error(real_att, syn_att,
  'MSE_B')`; plus `100 * task_balance (0.01) * error(emb_real, emb_syn, 'MSE_B')`;
  'MSE_B' = sum over classes of the squared difference of the per-class means
  (reshape (K, batch_real, -1) / (K, ipc, -1)); SGD(lr_img=1, momentum=0.5), one step.
- utils.py `get_attention` (param=1: sum over channels of |f|**exp; 'l2':
  F.normalize(p=2) of the (B, H*W) map).
- utils.py get_network('ConvNet') builds net_norm='batchnorm' (width 128, depth 3): case
  `bn` (here width 4, depth 3, 8x8 RGB); `bn_dsa` the same under the default strategy with
  seeds fixed so that the classes draw color, cutout and rotate (parameters saved); `in`
  the instancenorm ConvNet (DC's default) without augmentation.
Run by hand (needs torch), writes tests/fixtures/reference/datadam.npz:
    PYTHONPATH=. /work/venv-torch/bin/python benchmarks/reference/datadam.py
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import _classic_ref as R

K, B, IPC, C, H, WIDTH, DEPTH = 3, 4, 2, 3, 8, 4, 3
LR_IMG, MOMENTUM, TASK_BALANCE = 1.0, 0.5, 0.01  # main_DataDAM.py defaults
DSA_FAMILIES = ("color", "cutout", "rotate")  # what classes 0, 1, 2 draw in case bn_dsa


def get_attention(feature_set, param=0, exp=4, norm="l2"):
    assert param == 1 and norm == "l2"  # the call main_DataDAM.py makes
    attention_map = torch.sum(torch.abs(feature_set) ** exp, dim=1)
    vectorized_attention_map = attention_map.view(feature_set.size(0), -1)
    return F.normalize(vectorized_attention_map, p=2.0)


def datadam_loss(net, x_real, image_syn, strategy="none", seeds=None, out=None, prefix=""):
    num_classes, ipc = x_real.shape[0], image_syn.shape[0] // x_real.shape[0]
    batch_real = x_real.shape[1]
    param = R.ParamDiffAug()
    activations = {}

    def getActivation(name):
        def hook_func(m, inp, op):
            activations[name] = op.clone()
        return hook_func

    def refreshActivations(activations):
        model_set_activations = [activations[i] for i in activations.keys()]
        return {}, model_set_activations

    def attach_hooks(net):
        hooks = []
        for module in net.features.named_modules():
            if isinstance(module[1], nn.ReLU):
                hooks.append(net.features[int(module[0])].register_forward_hook(
                    getActivation("ReLU_" + str(len(hooks)))))
        return hooks

    def error(real, syn):  # err_type "MSE_B"
        return torch.sum((torch.mean(real.reshape(num_classes, batch_real, -1), dim=1)
                          - torch.mean(syn.reshape(num_classes, ipc, -1), dim=1)) ** 2)

    loss = torch.tensor(0.0)
    mid_loss, out_loss = 0, 0
    images_real_all, images_syn_all = [], []
    for c in range(num_classes):
        img_real = x_real[c]
        img_syn = image_syn[c * ipc:(c + 1) * ipc].reshape((ipc, *image_syn.shape[1:]))
        if strategy != "none":
            img_real, img_syn = R.siamese_pair(img_real, img_syn, strategy, seeds[c], param,
                                               f"{prefix}c{c}", out)
        images_real_all.append(img_real)
        images_syn_all.append(img_syn)
    images_real_all = torch.cat(images_real_all, dim=0)
    images_syn_all = torch.cat(images_syn_all, dim=0)

    hooks = attach_hooks(net)
    output_real = net.forward_dam(images_real_all)[0].detach()
    activations, original_model_set_activations = refreshActivations(activations)
    output_syn = net.forward_dam(images_syn_all)[0]
    activations, syn_model_set_activations = refreshActivations(activations)
    for h in hooks:
        h.remove()

    for layer in range(len(original_model_set_activations) - 1):
        real_attention = get_attention(original_model_set_activations[layer].detach(),
                                       param=1, exp=1, norm="l2")
        syn_attention = get_attention(syn_model_set_activations[layer], param=1, exp=1,
                                      norm="l2")
        tl = 100 * error(real_attention, syn_attention)
        loss += tl
        mid_loss += tl
    output_loss = 100 * TASK_BALANCE * error(output_real, output_syn)
    loss += output_loss
    out_loss += output_loss
    return loss, mid_loss, out_loss


def main():
    def loss_fn(net, norm, x_real, image_syn, strategy, seeds, out, prefix):
        loss, mid, outl = datadam_loss(net, x_real, image_syn, strategy, seeds, out, prefix)
        return loss, {"attention_loss": float(mid), "output_loss": float(outl)}

    R.image_step_fixture("datadam", (K, B, IPC, C, H, WIDTH, DEPTH),
                         (("bn", "batchnorm", True), ("bn_dsa", "batchnorm", False),
                          ("in", "instancenorm", True)),
                         "bn_dsa", DSA_FAMILIES, LR_IMG, MOMENTUM, loss_fn)


if __name__ == "__main__":
    main()
