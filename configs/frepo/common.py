"""Shared base of the FRePo presets: Fashion-MNIST and FRePo's own hyper-parameters.

A preset is this base plus what differs (`jaxdd.configs.family_base(__file__, ...)`).
Values from github.com/yongchao97/FRePo (commit 9b98c65), file:line:
- pool of 10 online models, each replaced after 100 online steps: README.md "hyper"
  line (`--max_online_updates=100 --num_nn_state=10`), script/distill.py:72;
- LAMB on images + labels, lr 3e-4, cosine decay to 0.1x: script/distill.py:62-63,
  lib/datadistillation/frepo.py:399-400; labels learned: script/distill.py:71;
- ridge reg 1e-6 relative to tr(K_ss)/n: lib/datadistillation/frepo.py:106,110;
- online models: Adam lr 3e-4, MSE on the synthetic labels: script/distill.py:49-50,
  frepo.py:424 (`train_step` with `mean_squared_loss`);
- real batch 1024 (script/distill.py:64); online batch min(N, 1000), the kernel's
  eval_batch_size (script/distill.py:65) passed as the sample size (frepo.py:351-359, 395);
- no ZCA for MNIST / Fashion-MNIST (README "Load checkpoint" note), no flip for grey
  datasets (script/distill.py:147-149);
- ConvNet with BatchNorm for the online models: README.md `--normalization=batch`;
- evaluation (`frepo_cpu` / `frepo` protocols, jaxdd/evaluate/protocols.py): the learned
  labels with MSE, Adam 3e-4, ConvNet without norm: script/eval.py:128-129,202-233.
"""


def get_config():
    return dict(
        method="frepo",
        dataset="fashion_mnist",
        ipc=10,
        seed=0,                       # every random choice derives from key(seed)
        preprocess="normalize",       # per-channel mean/std (FRePo: no ZCA for Fashion-MNIST)
        init="real",
        # FRePo's evaluation (script/eval.py): MSE on the learned labels, Adam 3e-4, no norm
        eval=dict(protocol="frepo_cpu", seeds=3),
        frepo=dict(pool_size=10, max_online_updates=100, reg=1e-6, lr_syn=3e-4,
                   syn_optimizer="lamb", cosine_alpha=0.1, learn_label=True,
                   lr_online=3e-4, batch_real=1024, batch_online=1000,
                   export_labels="learned"),  # y_proto, as FRePo saves and evaluates it
        by_ipc={1: {}, 10: {}, 50: {}},
    )
