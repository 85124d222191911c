"""Statistics matching ("recover" stage): SRe2L with the CDA, G-VBSM and DWA options.

Pixels are optimised against a frozen BatchNorm teacher f (inference mode):

    L(x) = CE(f(A(x)), y) + r_bn * sum_l w_l (r_var ||var_l - rv_l||_2 + ||mean_l - rm_l||_2)   (1)

mean_l / var_l: per-channel mean and biased variance of the *input* of BN layer l over
(N, H, W) of the augmented batch A(x); rm_l / rv_l: that layer's running statistics;
w_0 = `first_bn_multiplier` (10), w_l = 1 otherwise; r_var = 1 except for DWA.

G-VBSM adds, for every convolution l with input statistics (channel mean_l / var_l (C,),
cell statistics pm_l / pv_l) and dataset targets t_l:

    C_l = ||var_l - tv_l|| + ||mean_l - tm_l|| + ||pm_l - tpm_l|| + ||pv_l - tpv_l||       (2)
    D   = sum_c KL( sg(softmax(lam_c / tau)) || softmax(lam_c) ),  lam_c = eigvalsh(F_c F_c^T)  (3)

    L(x) = CE + r_bn (sum_l w_l BN_l + sum_l w_l keep_l C_l) + diversity * D

keep_l ~ Bernoulli(1 - conv_drop) per layer and iteration; F_c: the batch's images of class
c, average-pooled to 32x32 and flattened; w = first_bn_multiplier on the first captured
layer in call order (with conv matching on: the stem conv, as the reference), 1 elsewhere.

BN inputs are captured with `flax.linen.intercept_methods` (no model rewrite): any Linen
model whose BN layers are `nn.BatchNorm` works. A `flax.nnx` model works too: its
`nnx.BatchNorm` / `nnx.Conv` calls are wrapped for the duration of one forward pass
(`_capture_nnx`), which yields the same `BNStat` list; pass the module as `model` and
`nnx.state(module)` (or None) as `variables`.

Modules, in the order of the data flow: `capture` (BN / conv input statistics of one
forward pass, Linen and NNX), `targets` (G-VBSM dataset targets of the conv inputs),
`losses` (eqs. 1-3), `recover` (the recover Distiller, DWA, batch layout). The image
augmentations (crop, flip, jitter, the CDA schedule) live in `jaxdd.augment.crops`.

G-VBSM (spec section 4) adds, as options of `RecoverConfig` (all off = SRe2L):
  * the input of every convolution (`CONV_TYPES`, Linen; `nnx.Conv`) matched against
    dataset targets precomputed once (`compute_conv_targets`, or `streamed_conv_targets`
    over a loader for data larger than memory; cached on disk by
    `jaxdd.population.conv_targets`): channel mean/var plus the mean/var of each
    patch_size^2 spatial cell, four norms per layer (eq. 2), each layer's term dropped with
    probability p per iteration (explicit key);
  * moving-average statistics `ema + (stat - sg(stat))` for BN and conv terms (`stat_ema`),
    started at zero (`stat_ema_init="zero"`, the reference: its hooks' averages start at
    the float 0., so the first update is a * 0 + (1 - a) stat) or at the initial batch's
    statistics ("batch");
  * the within-class diversity term on Gram eigenvalues (`diversity_loss`, eq. 3);
  * teachers of several architectures as a list, all each iteration or one per iteration
    in rotation (`teacher_schedule`, `teacher_index`: t mod T).

Facts carried from the references (VILA-Lab/SRe2L `recover_cifar.py`, `CDA/utils.py`,
`CDA/recover_cda_*.py`): BN hook = input mean over (N, H, W) and `var(unbiased=False)`,
`torch.norm(rv - var, 2) + torch.norm(rm - mean, 2)`; rescale [first_bn_multiplier] +
[1] * (L - 1); Adam(betas (0.5, 0.9), eps 1e-8), lr = 0.5 (1 + cos(pi t / T)) lr0 set
before step t (no warm-up); fresh optimiser and fresh N(0, 1) noise per batch of 100
classes (one image per class per IPC index); jitter = `torch.roll` by (randint(0, j),
randint(0, j)) shared by the batch, after RandomResizedCrop + flip applied to the whole
batch tensor (one box, one flip per iteration); clamp channel c to [-m_c/s_c, (1-m_c)/s_c]
after each step; the last iterate is saved. CDA: s_min(t) cosine/linear/step to 0.08 until
milestone * T.

G-VBSM facts (shaoshitong/G_VBSM_Dataset_Condensation, `recover/utils.py` ConvFeatureHook and
`data_synthesis_with_svd_with_db_with_all_statistic.py`): conv hook on the conv *input*;
channel stats over (N, H, W); patch stats: the map bilinearly resized up to a multiple of
the cell side, a map smaller than a cell too (16 px ImageNet, 4 px in the 32/64-px
branches; 2x2 -> one 4x4 cell), one mean/var per cell pooled
over (N, C, h, w); targets = sum over an epoch of the real training set of (n_b / N) * the
batch statistic (batch 64, RandomCrop(pad 4) + flip, teacher in eval mode); term =
||t_var - v|| + ||t_mean - m|| + ||t_pmean - pm|| + ||t_pvar - pv||, zeroed with prob.
drop_rate (0.4) before the EMA update; the hooks' moving averages start at the float 0.
(`isinstance(dd, int)` is false, so the first update is a * 0 + (1 - a) stat:
stat_ema_init="zero"; a run that computes its targets also passes them through the BN
hooks, registered before that pass); one loss list over BN and conv modules in module
order with first_multiplier on the first entry (the stem conv); r_loss weights BN and conv
terms alike. Diversity: AdaptiveAvgPool2d(32) of each augmented image, flattened, Gram per
class, l = eigvals, loss = sum_classes KLDiv(log_softmax(l), softmax(l / tau).detach())
= KL(softmax(l / tau) || softmax(l)), tau 4, weight nuc_norm (1 on CIFAR-100).
Teachers (CIFAR-100 branch, data_synthesis...py:331, :112, :150-159): ResNet18, ConvNetW128
(instance norm: conv hooks only), MobileNetV2 (mobile_half), WRN_16_2, ShuffleNetV2_0_5;
at each iteration `id = counter % 5` (one counter over every batch), and only that
model's CE and hook terms (its first hooked layer x first_multiplier) enter the loss; the
hooks of the others do not run, so their moving averages wait.
"""
