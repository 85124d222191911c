"""Shared base of the trajectory-matching presets: the settings MTT's reference scripts use
for every dataset (buffer.py experts, distill.py's loop), which TESLA, DATM and FTD keep.

A preset is this base plus what differs (`jaxdd.configs.family_base(__file__, ...)`).
"""


def get_config():
    return dict(
        method="mtt",
        seed=0,                       # every random choice derives from key(seed)
        init="real",                  # real | noise: initial synthetic images
        buffer_dir=None,              # experts; None = runs/buffers/<dataset>-<model>-... (shared by IPCs)
        ckpt_every=500,               # checkpoint period [iterations]
        experts=dict(
            num_experts=100,          # independent expert trajectories (buffer.py)
            epochs=50,                # epochs per expert
            lr=0.01,                  # expert SGD lr (lr_teacher), no momentum
            batch_size=256,
            dsa="color_crop_cutout_flip_scale_rotate",
        ),
        mtt=dict(
            lr_lr=1e-5,               # SGD lr on the inner step size
            grad_mode="remat",        # remat (exact, constant memory) | bptt | tesla
            unroll=1,                 # rolled inner loop: constant memory
        ),
        eval=dict(protocol="mtt", seeds=5),
    )
