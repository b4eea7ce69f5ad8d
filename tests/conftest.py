"""Shared test fixtures. Run the suite once per backend:
``KERAS_BACKEND=jax pytest`` (see the Makefile's ``test`` target)."""

import gc
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

# Tiny but complete: 4 stages, every stage with spatial reduction except the
# last, heads > 1 so head splitting is exercised.
TINY = {
    "depths": [1, 1, 1, 1],
    "hidden_sizes": [8, 16, 24, 32],
    "num_heads": [1, 2, 3, 4],
    "sr_ratios": [8, 4, 2, 1],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "mlp_ratios": [4, 4, 4, 4],
}
TINY_DECODER = 16


def pytest_report_header(config):
    return f"keras backend: {BACKEND} (set KERAS_BACKEND to change)"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _clear_session():
    yield
    keras.backend.clear_session()


# clear_session() runs a full gc.collect() after every test: with
# TensorFlow, JAX, PyTorch and transformers loaded (~730k objects) that
# took 0.35 s of CPU per test, minutes per suite. Objects alive between
# test modules (libraries, module globals, session fixtures) are frozen
# (gc.freeze), so each collection scans only what later tests created; the
# garbage of a test is still freed at its end.
def _freeze():
    gc.collect()
    gc.freeze()


def pytest_collection_finish(session):
    _freeze()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    # After the last test of a module its module fixtures are gone: freeze
    # what the module imported lazily, not the fixtures.
    if nextitem is None or nextitem.path != item.path:
        _freeze()
    return result


def tiny_segformer(num_classes=5, **kwargs):
    import keras_segformer

    return keras_segformer.build_segformer(
        num_classes, decoder_hidden_size=TINY_DECODER, **TINY, **kwargs
    )


# -- backend-independent tests ----------------------------------------------
# Tests that never reach the Keras backend (tf.data pipelines, file readers,
# numpy pre/post-processing, palettes, argument parsing, torch-only
# references): they give the same result whatever KERAS_BACKEND is, so
# `make test` runs them once, in the TensorFlow run, and deselects them with
# `-m "not backend_independent"` on JAX and PyTorch. Listed by function name,
# so a test added to one of these files runs on every backend until someone
# lists it. A test that builds or calls a model, layer, loss, metric,
# optimizer or any keras.ops function is backend dependent: keep it off this
# list. Check an addition with `pytest -m backend_independent
# --audit-backend-independent` (it fails a listed test that calls into
# keras/src/backend/<backend>/).
BACKEND_INDEPENDENT = {
    # transformers config mapping (no model built).
    "test_to_hf.py": {"test_unknown_hidden_act_is_named"},
    # Keras internals: the fallbacks' own logic.
    "test_keras_internals.py": {
        "test_torch_default_device_without_keras_module",
        "test_turn_off_names_its_paths",
        "test_update_hooks_of_another_signature_are_refused",
    },
    # tf.data pipeline, augmentation, dataset readers, synthetic data.
    "test_data.py": {
        "test_training_keeps_image_and_label_aligned",
        "test_training_label_values_are_preserved",
        "test_rescale_then_pad_geometry",
        "test_rescale_size_matches_mmcv",
        "test_balanced_crop_rule_ignores_255",
        "test_cat_max_ratio_retries_crops",
        "test_random_crop_single_class_still_returns_a_crop",
        "test_flip_moves_image_and_label_together",
        "test_photometric_is_a_per_pixel_colour_map",
        "test_photometric_brightness_step",
        "test_seed_makes_pipeline_reproducible",
        "test_evaluation_returns_whole_normalized_images",
        "test_evaluation_resize_and_padded_batches",
        "test_reduce_labels",
        "test_label_map_unmapped_ids_are_ignored",
        "test_label_map_runs_before_reduce_labels",
        "test_cityscapes_reader_maps_label_ids",
        "test_ade20k_reader",
        "test_palette_mask_indices_are_class_ids",
        "test_error_label_out_of_range_names_file",
        "test_error_size_mismatch_names_file",
        "test_error_corrupt_files_name_file",
        "test_error_multichannel_mask_names_file",
        "test_error_image_without_mask_names_file",
        "test_error_empty_dataset",
        "test_folder_pairs_nested_files_by_name",
        "test_synthetic_is_deterministic_by_seed",
        "test_synthetic_classes_are_present_and_distinct",
        "test_synthetic_rejects_bad_num_classes",
    },
    # numpy/PIL pre- and post-processing against transformers' PIL
    # processor, palettes, drawing.
    "test_processing.py": {
        "test_preprocess_equals_transformers",
        "test_preprocess_batch_and_options_equal_transformers",
        "test_pil_modes_converted_like_transformers",
        "test_array_channels_converted",
        "test_image_errors",
        "test_resolve_size",
        "test_labels_equal_transformers",
        "test_reduce_labels_and_label_files",
        "test_resize_logits_batch_and_binary_mask",
        "test_palettes_and_names",
        "test_colorize_and_overlay",
        "test_save_prediction_round_trip",
        "test_save_prediction_without_legend",
        "test_one_copy_of_names_palettes_extensions_and_label_parsing",
    },
    # Harness parsing, the chart, the RSS probe, bf16 units, the
    # transformers-only columns (GPU cell, transformers-bf16).
    "test_benchmark.py": {
        "test_failures_are_reported_not_raised",
        "test_turns_alternate_and_a_missing_worker_is_skipped",
        "test_parse_case_and_columns",
        "test_model_configs",
        "test_smooth_images_are_smooth",
        "test_chart_without_matplotlib",
        "test_cli_registers_benchmark",
        "test_cli_benchmark_outside_a_checkout",
        "test_tools_benchmark_help",
        "test_peak_rss_is_the_worker_not_its_parent",
        "test_gpu_device_measures_a_gpu_or_refuses",
        "test_bf16_units",
        "test_bf16_cells_without_units",
        "test_bf16_anyway_runs_the_bf16_columns",
        "test_transformers_bf16_column",
        "test_transformers_bf16_step_runs_under_autocast",
        # Deployed columns: worker processes export and time on their own
        # backends; parsing; the kept-artifact record.
        "test_deployed_columns",
        "test_deployed_columns_parse_and_refuse",
        "test_kept_artifacts_are_reused",
    },
    # Checkpoint readers, format detection and the torch-only references.
    "test_convert_formats.py": {
        "test_references_agree_with_transformers",
        "test_detect_format",
        "test_malicious_pickle_is_refused",
        "test_truncated_and_corrupt_files",
        "test_restricted_reader_equals_torch_load",
        "test_read_state_dict_without_torch",
        "test_resolve_labels",
    },
    "test_convert_hf.py": {
        "test_saved_names_and_in_memory_names_canonicalize_alike",
        "test_code_carrying_pickle_is_refused",
    },
    "test_convert_cli.py": {
        "test_convert_is_registered",
        "test_errors_name_the_flags",
    },
    # The parsers' help, defaults and shared flags; the demo's colours.
    "test_cli_help.py": {
        "test_every_command_and_flag_explains_itself",
        "test_a_flag_takes_the_same_values_in_every_command",
        "test_crop_size_takes_one_or_two_sizes",
        "test_help_lines_end_with_the_default",
        "test_predict_colours_the_demo_model_as_the_demo_does",
    },
    # Module sizes and import circles, read with ast.
    "test_house.py": {
        "test_no_module_is_over_500_lines",
        "test_no_import_circle_in_the_package",
        "test_the_checks_find_what_they_look_for",
    },
    "test_cli_predict.py": {
        "test_palette_auto_uses_dataset_colours",
        "test_jax_compilation_cache_folder",
    },
    # Window arithmetic and a numpy model (no Keras model inside).
    "test_inference.py": {
        "test_slide_windows_follow_mmseg",
        "test_windows_padded_to_crop_and_batched",
        "test_merge_probs_averages_probabilities",
    },
    "test_export.py": {"test_calibration_images_sources"},
    # Every step in a fresh process with its own backend (all three).
    "test_journey.py": {"test_train_then_predict_and_export_on_other_backends"},
    # The documentation's examples: fresh processes on PyTorch; the pages'
    # marks and the command-line page against the parsers.
    "test_docs_examples.py": {
        "test_python_examples_run_as_written",
        "test_not_tested_marks_give_a_reason",
        "test_readme_opens_with_a_pretrained_model_on_a_photo",
        "test_cli_page_equals_the_parsers",
    },
    # Data checks (PIL), the train command stopped before any model is
    # built, a callback fed logs, the stderr filter (TensorFlow only).
    "test_data_checks.py": {
        "test_bad_validation_mask_is_refused_before_training",
        "test_sizes_modes_and_unreadable_files_are_named",
        "test_image_pixels_are_not_decoded_by_the_check",
        "test_exif_rotated_image_is_checked_upright",
        "test_masks_without_a_labelled_pixel_are_an_error",
        "test_binary_0_255_masks_warn_with_the_fix",
        "test_large_sets_show_a_progress_bar",
        "test_an_epoch_without_labelled_pixels_is_an_error",
        "test_train_exits_with_the_divergence_status",
        "test_log_filter_drops_only_data_error_records",
        "test_data_error_records_of_tensorflow_are_dropped",
    },
    # Argument and file errors raised before any model is built; a
    # `convert` stopped by its config file in a fresh process.
    "test_cli_errors.py": {
        "test_convert_config_json_list_is_one_line",
        "test_convert_folder_errors",
        "test_debug_shows_the_traceback",
        "test_a_bug_keeps_its_traceback",
        "test_labels_json_of_the_wrong_type",
        "test_a_lost_worker_has_its_own_exit_status",
        "test_model_commands_share_the_model_arguments",
        "test_predict_refuses_bad_arguments",
        "test_an_error_after_a_progress_line_starts_a_line",
    },
    # The one image decoder: 16-bit and EXIF images, masks, unreadable
    # files (PIL and tf.data, no model).
    "test_bad_input.py": {
        "test_16bit_image_is_scaled_to_8bit",
        "test_16bit_mask_keeps_its_ids",
        "test_mask_ids_above_255_are_an_error",
        "test_mask_exif_orientation_is_applied",
        "test_unreadable_file_is_named",
    },
    # The ops switch's parsing and its environment variable (fresh imports).
    "test_ops.py": {
        "test_parse_mode_accepts_the_documented_values_only",
        "test_env_var_is_read_at_import_and_a_bad_value_refused",
    },
    # Registry entries and key parsing, docstrings: no model is built.
    "test_convert_loader.py": {
        "test_foreign_key_maps_share_the_canonical_parser",
        "test_every_format_is_a_registry_entry",
    },
    "test_variants.py": {"test_variant_functions_are_documented"},
    # The run folder's lock (a second process, no model).
    "test_run_lock.py": {
        "test_a_second_run_is_refused_and_touches_nothing",
        "test_the_lock_is_released_after_the_run_and_after_an_error",
    },
    # Atomic writes, links, ownership, exit statuses, size bounds (files,
    # PIL, argument checks; no model).
    "test_reliability_files.py": {
        "test_write_atomic_replaces_a_link_and_a_link_at_the_temporary",
        "test_masks_and_overlays_replace_links",
        "test_exports_and_conversions_replace_links",
        "test_demo_data_replaces_links",
        "test_the_epoch_log_replaces_a_link",
        "test_a_failed_write_leaves_the_old_file_and_no_temporary",
        "test_the_run_lock_does_not_follow_a_link",
        "test_overwrite_removes_only_the_files_a_run_wrote",
        "test_train_overwrite_refuses_a_folder_that_never_held_a_run",
        "test_predict_never_replaces_an_input_or_a_mask_beside_it",
        "test_predict_does_not_read_its_outputs_and_names_never_collide",
        "test_interrupts_and_faults_are_one_line_and_a_status",
        "test_sizes_that_cannot_fit_are_refused_before_any_work",
        "test_a_keras_zip_that_inflates_too_far_is_refused_unread",
    },
    # The get_config helper on a plain object (no Keras object).
    "test_serializable.py": {
        "test_attribute_config_reads_names_then_renamed_keys",
        "test_attribute_config_names_a_missing_attribute",
    },
    # File-list sharding (numpy and tf.data, no model).
    "test_multiworker.py": {
        "test_shards_split_the_files_once",
        "test_worker_dataset_pads_a_shorter_shard_with_blank_samples",
    },
    # This marking itself (pytest runs on a sample file).
    "test_conftest_marks.py": {
        "test_listed_tests_are_marked_and_deselected",
        "test_a_listed_name_that_is_gone_stops_the_run",
        "test_run_once_tests_run_on_one_backend_only",
        "test_audit_fails_a_listed_test_that_calls_the_backend",
        "test_objects_from_before_the_tests_are_frozen",
        # The Makefile's schedule (make with a stand-in python).
        "test_make_test_runs_every_part_longest_first",
        "test_a_failing_part_fails_make_test_after_all_ran",
        "test_a_selection_runs_each_backend_whole",
    },
}


# -- the minimum-Keras smoke suite ---------------------------------------------
# Marked min_keras: `make test` also runs them (parts min-jax, min-torch)
# with the lowest Keras pyproject.toml declares first on PYTHONPATH, and
# sets KERAS_SEGFORMER_EXPECT_KERAS to that version: a session that
# imported another Keras stops before any test (see pytest_configure).
MIN_KERAS_SMOKE = {
    # Every fast path on (the fixture) and each one's fallback.
    "test_keras_internals.py": {
        "test_hidden_keras_names_fall_back_with_the_same_numbers",
        "test_optimizer_without_adam_slots_takes_adamw_update_step",
    },
    "test_models.py": {
        "test_save_and_load_keras_file",
        "test_compiled_model_reloads_compiled",
        "test_predict_on_arrays_equals_keras_predict",
    },
    "test_parity_hf.py": {
        "test_direct_call_matches_transformers",
        "test_backbone_model_matches_transformers",
    },
    # fit, then the weights saved and loaded into a new model.
    "test_keras_way.py": {
        "test_trained_weights_load_into_a_new_model_without_warnings"
    },
}


def pytest_configure(config):
    expected = os.environ.get("KERAS_SEGFORMER_EXPECT_KERAS")
    if expected:
        from packaging.version import Version

        if Version(keras.__version__) != Version(expected):
            raise pytest.UsageError(
                f"KERAS_SEGFORMER_EXPECT_KERAS={expected}, but keras "
                f"{keras.__version__} was imported from {keras.__file__}"
            )


# -- backend-agnostic logic, run once -----------------------------------------
# Tests whose subject is our own backend-agnostic logic (the run folder's
# bookkeeping and refusals, the demo command, initialising from a
# transformers folder) but that need a Keras model to get there. They run
# on ONCE_ON only, the backend whose training step compiles nothing, and
# are deselected on the others (KERAS_SEGFORMER_TEST_ALL=1 runs them
# everywhere). The Keras paths they pass through (fit, save, load, resume
# after a kill, the train and evaluate commands) are tested on every
# backend by test_train_resume's kill tests, test_train_cli,
# test_keras_way and test_journey.
ONCE_ON = "torch"
RUN_ONCE = {
    # Interop files (transformers' pipeline, keras-hub presets): the files
    # are written and read with numpy / h5py, the same on every backend;
    # keras-hub's eager model costs minutes on JAX. Our tanh-GELU numerics
    # are checked on every backend against transformers (test_to_hf).
    "test_keras_hub.py": {
        "test_keras_hub_preset_loads_with_its_numerics",
        "test_our_preset_loads_in_keras_hub",
        "test_exact_gelu_model_is_written_with_a_warning",
        "test_what_keras_hub_cannot_hold_is_refused",
    },
    "test_to_hf.py": {
        "test_pipeline_runs_on_saved_folder_and_its_masks_equal_ours",
    },
    # An artifact of a trained model scored like the model (the export
    # runs through TensorFlow's graph from every backend).
    "test_benchmark.py": {"test_deployed_quality_on_a_trained_model"},
    # HDF5 kept off the disk (h5py's writer is the same on every backend);
    # a subprocess with its own Keras import.
    "test_reliability_files.py": {
        "test_weights_on_a_full_disk_end_in_one_line",
    },
    "test_train_resume.py": {
        "test_log_has_one_row_per_epoch_when_killed_before_the_backup",
        "test_fit_refuses_another_model_and_names_the_run",
        "test_fit_on_a_finished_run_loads_it_and_trains_nothing",
        "test_files_without_a_run_record_are_refused_and_overwritten",
        "test_command_on_a_finished_run_does_nothing",
        "test_command_names_the_setting_that_differs",
        "test_command_names_the_data_or_class_names_that_differ",
        "test_command_continues_with_more_epochs_and_overwrites",
    },
    "test_train_cli.py": {
        "test_train_init_from_a_transformers_directory",
        "test_demo_command_end_to_end",
    },
    # Its command runs on JAX whatever the suite's backend.
    "test_cli_predict.py": {"test_command_line_keeps_jax_compiled_steps"},
}


def _listed(item, table, label, checked):
    """Whether ``item`` is listed in ``table`` (a name that is gone stops
    the run)."""
    names = table.get(item.path.name)
    if not names:
        return False
    if (label, item.path.name) not in checked:
        checked.add((label, item.path.name))
        missing = sorted(n for n in names if not hasattr(item.module, n))
        if missing:
            raise pytest.UsageError(
                f"tests/conftest.py {label} lists {', '.join(missing)} for "
                f"{item.path.name}, which defines no such test"
            )
    return getattr(item, "originalname", item.name) in names


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the listed tests (before `-m` selects on the marker); deselect
    the run-once tests on the other backends."""
    checked, kept, dropped = set(), [], []
    everywhere = os.environ.get("KERAS_SEGFORMER_TEST_ALL") == "1"
    for item in items:
        if _listed(item, BACKEND_INDEPENDENT, "BACKEND_INDEPENDENT", checked):
            item.add_marker(pytest.mark.backend_independent)
        if _listed(item, MIN_KERAS_SMOKE, "MIN_KERAS_SMOKE", checked):
            item.add_marker(pytest.mark.min_keras)
        once = _listed(item, RUN_ONCE, "RUN_ONCE", checked)
        if once and BACKEND != ONCE_ON and not everywhere:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_addoption(parser):
    parser.addoption(
        "--audit-backend-independent",
        action="store_true",
        help="fail a test marked backend_independent that calls the Keras "
        "backend (setup and call traced with sys.setprofile; slow)",
    )


_BACKEND_DIRS = tuple(
    os.path.join(os.path.dirname(keras.__file__), "src", "backend", name, "")
    for name in ("jax", "tensorflow", "torch", "numpy", "openvino")
)
_AUDIT_HITS = pytest.StashKey[list]()


def _traced(item, phase):
    """Run one phase of a marked test, recording Keras backend calls."""
    hits = item.stash.setdefault(_AUDIT_HITS, [])

    def profile(frame, event, arg):
        if event == "call" and not hits:
            name = frame.f_code.co_filename
            if name.startswith(_BACKEND_DIRS) and frame.f_code.co_name != (
                "<module>"
            ):
                hits.append(f"{name}:{frame.f_code.co_name} ({phase})")

    sys.setprofile(profile)
    try:
        return (yield)
    finally:
        sys.setprofile(None)


def _auditing(item):
    return item.config.getoption("audit_backend_independent") and (
        item.get_closest_marker("backend_independent") is not None
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    if not _auditing(item):
        return (yield)
    return (yield from _traced(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if not _auditing(item):
        return (yield)
    result = yield from _traced(item, "call")
    hits = item.stash.get(_AUDIT_HITS, [])
    if hits:
        pytest.fail(
            f"{item.nodeid} is marked backend_independent but called the "
            f"Keras backend: {hits[0]}",
            pytrace=False,
        )
    return result
