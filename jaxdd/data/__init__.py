"""Real datasets (TFDS data sources, offline Fashion-MNIST, user folders / npz) and the
train-fitted preprocessing (normalisation, ZCA) that every distilled set stores."""

from jaxdd.data.preprocess import (
    KINDS,
    Preprocess,
    apply,
    fit_preprocess,
    from_dict,
    invert,
    to_dict,
)
from jaxdd.data.sources import (
    Dataset,
    clear_cache,
    default_data_dir,
    load_dataset,
    check_ipc,
    sample_indices_per_class,
    sample_per_class,
    split_validation,
)

__all__ = [
    "KINDS", "Preprocess", "apply", "fit_preprocess", "from_dict", "invert", "to_dict",
    "Dataset", "clear_cache", "default_data_dir", "load_dataset", "sample_per_class", "sample_indices_per_class", "check_ipc",
    "split_validation",
]
