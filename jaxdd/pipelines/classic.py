"""Classic matchers end to end: DC, DSA, DM, DataDAM -> artefact.

Real batches are drawn inside the jitted step from the preprocessed training set kept on
device with a per-class index table, so the whole iteration is one compiled function.
"""

from __future__ import annotations

from jaxdd import data as jdata
from jaxdd.methods import datadam, dc, dm
from jaxdd.methods.matching import class_index_table, sample_real_batch
from jaxdd.models import get_model
from jaxdd.pipelines.common import Context, Prepared, init_state, run_prepared
from jaxdd.pipelines.spec import Method

FACTORIES = {"dc": dc.make_dc, "dsa": dc.make_dc, "dm": dm.make_dm,
             "datadam": datadam.make_datadam}


def prepare(ctx: Context) -> Prepared:
    cfg = ctx.cfg
    spec = next(m for m in METHODS if m.name == cfg["method"])
    mcfg = spec.section_config(cfg)
    # DM/DataDAM keep the reference's `Iteration` in their section for the record; a value
    # set there would be silently ignored, so refuse it (the run's length: `iterations`)
    if spec.name in ("dm", "datadam") and \
            mcfg.iterations not in (type(mcfg).iterations, cfg["iterations"]):
        raise ValueError(f"{spec.section}.iterations={mcfg.iterations} is not read (the run "
                         f"takes the top-level iterations={cfg['iterations']}); set "
                         f"iterations={mcfg.iterations} instead")
    model = get_model(cfg["model"], ctx.ds.num_classes, ctx.ds.image_shape)
    distiller = FACTORIES[spec.name](mcfg, model, ctx.ds.num_classes)
    x_train = jdata.apply(ctx.pre, ctx.ds.x_train)  # host numpy; the driver places it
    idx_KxM, counts_K = class_index_table(ctx.ds.y_train, ctx.ds.num_classes)
    state = init_state(ctx, distiller, mcfg.init)

    def batch_fn(real, key, t):
        return sample_real_batch(key, real, mcfg.batch_real)

    def export(state):
        return {"artefact": (state.syn.x_syn_NHWC, state.syn.y_syn, None)}

    return Prepared(distiller, state, batch_fn, (x_train, idx_KxM, counts_K), export)


METHODS = [
    Method("dc", "classic", dc.DCConfig, run_prepared(prepare),
           doc="gradient matching (Zhao et al. 2021)"),
    Method("dsa", "classic", dc.DCConfig, run_prepared(prepare),
           section_defaults={"dsa": True, "init": "real"},
           doc="gradient matching with differentiable Siamese augmentation"),
    Method("dm", "classic", dm.DMConfig, run_prepared(prepare),
           doc="distribution matching of random-network embeddings"),
    Method("datadam", "classic", datadam.DataDAMConfig, run_prepared(prepare),
           doc="attention matching of random networks"),
]
