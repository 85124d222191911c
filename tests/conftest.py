"""Shared test set-up: strict rank promotion, tiny data (and a persistent compile cache only
when $JAXDD_CACHE_DIR names one: reading XLA:CPU executables back from that cache can abort
the process in the installed jaxlib, so the default suite never uses it)."""

import atexit
import gc
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# The decoded-array cache of TFDS datasets (jaxdd.data.sources) goes to a folder of this
# test process (inherited by the CLI subprocesses), never to ~/.cache, unless a developer
# names one to keep between runs.
if "JAXDD_DATA_CACHE" not in os.environ:
    os.environ["JAXDD_DATA_CACHE"] = tempfile.mkdtemp(prefix="jaxdd-test-arrays-")
    atexit.register(shutil.rmtree, os.environ["JAXDD_DATA_CACHE"], True)
if os.environ.get("JAXDD_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXDD_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. Each XLA:CPU executable holds ~6
    memory mappings and the suite compiles thousands: kept for the whole session they pass
    Linux's vm.max_map_count (65530) and the next compile segfaults."""
    yield
    jax.clear_caches()
    gc.collect()


def write_tiny_npz(path) -> str:
    """A learnable 3-class, 8x8x1 dataset as an npz: class = which quadrant is bright."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 3, n).astype(np.int32)
        x = rng.integers(0, 60, (n, 8, 8, 1)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 180
        return x, y

    xtr, ytr = make(300)
    xte, yte = make(90)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return str(path)


@pytest.fixture
def tiny_npz(tmp_path):
    return write_tiny_npz(tmp_path / "tiny.npz")


def snapshot(root) -> dict[str, bytes]:
    """Every file under root: relative path -> bytes (for "nothing was touched" checks)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


# Default-suite tests moved to `-m slow` to keep `pytest -q -n 2` near 15 min on a 2-core
# machine; each covers a case a faster default test also reaches (seconds: one loaded run).
SLOW = {
    "test_models.py::test_chunked_apply_is_the_same_function_in_the_mtt_gradient",  # 943
    "test_models.py::test_channel_major_convnet_is_the_same_function_to_second_order"
    "[convnet_d3_w6-shape1]",                                      # 398; d2_w4_none stays
    "test_models.py::test_channel_major_convnet_is_the_same_function_to_second_order"
    "[convnet_d3_w8-shape0]",                                      # 275
    "test_models.py::test_grey_28px_padded_to_32_and_torch_init",  # 259
    "test_cli_artefact.py::test_evaluate_models_cross_architecture_table",  # 230
    "test_frepo.py::test_cli_distill_is_deterministic_and_resumes_bit_exactly",  # 183
    "test_frepo.py::test_pool_starts_staggered_and_resets_at_the_configured_step",  # 140
    "test_resnet_imagenet.py::test_bf16_logits_close_to_float32_and_params_stay_float32",  # 158
    "test_resnet_imagenet.py::test_state_dict_round_trip_gives_identical_logits"
    "[resnet18_imagenet]",                                         # 118; resnet18 stays
    "test_resnet_imagenet.py::test_state_dict_round_trip_gives_identical_logits"
    "[resnet50_imagenet]",                                         # 111
    "test_cli_faults.py::test_nan_step_is_skipped_reported_and_resumable[mtt]",  # 158
    "test_cli_faults.py::test_nan_step_is_skipped_reported_and_resumable[frepo]",  # 137
    "test_cli_faults.py::test_nan_step_is_skipped_reported_and_resumable[dsa]",  # 105
    "test_label_compression.py::test_random_subset_with_soft_labels_baseline",  # 145
    "test_classic.py::test_step_deterministic_per_key[datadam]",   # 141; dm, dc stay
    "test_experts.py::test_grouped_experts_equal_one_at_a_time[convnet_3of4]",  # 115
    # idle seconds with 2 workers from here on
    "test_pipeline_mtt.py::test_distill_resume_equals_uninterrupted",  # 79; test_resilience
    "test_score.py::test_score_soft_label_set",                     # 61
    "test_relabel_options.py::test_cli_report_best_test_and_val",   # 43
    "test_sharding.py::test_expert_groups_agree_across_devices",    # 38
    "test_resilience.py::test_corrupt_latest_checkpoint_is_named_and_resume_step_recovers",  # 37
    "test_rded.py::test_cli_rded_artefact",                         # 36; + reference fixture
    "test_gvbsm_teachers.py::test_gvbsm_mixed_teachers_rotate_pipeline",  # 35
    "test_dcc.py::test_all_classes_differs_from_per_class_and_shares_augmentations",  # 31
    "test_label_compression.py::test_label_pruning_replays_the_stored_augmentations",  # 27
    "test_relabel_options.py::test_sre2l_cifar_stored_labels_equal_online",  # 26
    "test_hello.py::test_projector_labels_pure_online_equals_stored",  # 24
    "test_datm.py::test_init_correct_only_draws_among_images_the_expert_gets_right",  # 22
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("tests/", 1)[-1] in SLOW:
            item.add_marker(pytest.mark.slow)
