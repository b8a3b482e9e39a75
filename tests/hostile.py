"""The hostile catalogue: every attack tried against the command line, the run folders and the app, with the
verdict diffinv must reach, and the tests that prove it.

Each case is ``id -> (where, what was tried, verdict)``. A test proves a case by carrying the marker
``@pytest.mark.hostile("id")`` (several ids allowed); ``tests/test_hostile_catalogue.py`` checks that every case
has at least one such test and every marker names a case. Rerun the whole catalogue with::

    python -m pytest -m hostile -q

Verdicts:

* ``refused``: a clear error before any work, naming the argument, the value (cut short) and what was expected;
  exit code 2 on the command line, the message in the page in the app; no traceback.
* ``safe``: the attack reaches nothing it should not (no file disclosed, no code run, nothing built).
* ``bounded``: memory or time stays within what the server or the user allowed, or the job is refused first.
* ``kept``: no file the user owns, and no finished work, is lost.
* ``reported``: what used to pass silently is excluded or resolved, and said (a warning or a note).
"""

from __future__ import annotations

VERDICTS = ("refused", "safe", "bounded", "kept", "reported")

CASES: dict[str, tuple[str, str, str]] = {
    # ------------------------------------------------------------------ earlier passes (held, kept as cases)
    "earlier-pickles-never-run": (
        "run folders",
        "pickle payloads as checkpoints, manifests, records and planted "
        "files of bench, audit, video and training folders",
        "safe",
    ),
    "earlier-runs-tab-roots": (
        "app",
        "Runs tab folders and files outside --runs-dir, symlinks out of it, Gradio file routes",
        "safe",
    ),
    "earlier-weights-roots": (
        "app",
        "weights and model folders outside --models-dir, files that are not state dicts",
        "safe",
    ),
    "earlier-app-numbers": ("app", "every numeric field out of range, non-integer, huge or non-finite", "refused"),
    "earlier-app-cancel-per-visitor": ("app", "cancel, a closed page, a second run of one session", "safe"),
    "earlier-app-one-run-at-a-time": ("app", "concurrent visitors' runs", "bounded"),
    "earlier-app-memory": ("app", "a job that does not fit in memory", "refused"),
    "earlier-kill-and-resume": ("bench, training", "kill -9 and Ctrl-C mid-run, then resume", "kept"),
    "earlier-concurrent-bench": ("bench", "two independent commands on one --out", "kept"),
    "earlier-claim-links": ("run folders", "claim files and the claims folder replaced by symlinks", "safe"),
    "earlier-line-cut-short": ("run folders", "a record line cut short by a crash", "kept"),
    "earlier-exif-16bit": ("images", "EXIF-rotated photos, 16-bit PNGs", "safe"),
    "earlier-decompression-bomb": ("images", "an image above the pixel limit; a planted larger own output", "refused"),
    "earlier-special-files": ("CLI", "a FIFO, a device or a folder where a file is expected", "refused"),
    "earlier-bad-numbers": ("CLI", "bad numbers, devices, environment values, output folders", "refused"),
    "earlier-memory-cli": ("CLI", "jobs that do not fit in memory (sizes, images, video)", "refused"),
    "earlier-disk-full": ("CLI", "a full disk while writing outputs", "refused"),
    # ------------------------------------------------------------------ app (issue 34, items 1-3, 8)
    "app-upload-server-path": (
        "app",
        'an upload naming a server file: a bare {"path": ...}, one with Gradio\'s '
        "meta, a file of Gradio's cache that no visitor uploaded; Invert, Depth, Channels",
        "safe",
    ),
    "app-layers-any-target": (
        "app",
        "/layers and runs asked for any timm model (vit_huge_patch14_224, a 100k name); "
        "--targets with an unknown name",
        "refused",
    ),
    "app-target-memory": (
        "app",
        "a target whose weights do not fit, built outside the run slot, many targets cached",
        "bounded",
    ),
    "app-upload-pixel-limit": ("app", "an upload above DIFFINV_MAX_IMAGE_PIXELS", "refused"),
    "app-upload-not-an-image": ("app", "an upload that is a text file or random bytes", "refused"),
    "app-port-out-of-range": ("app", "diffinv app --port 70000, 0, -1, a word", "refused"),
    "app-size-below-ssim-window": ("app", "size 8 to 10, below SSIM's 11-pixel window", "refused"),
    "app-long-names": (
        "app",
        "100k characters in every text field (weights, model, decoder, mapper, layer, target, "
        "method, photo, run folder)",
        "refused",
    ),
    "app-fixed-input-size": (
        "app",
        "a target of fixed input size (a ViT) at another size, in the app and with extract",
        "refused",
    ),
    "app-weights-wrong-keys": (
        "app",
        "--weights of another network, or with one tensor of the wrong shape, in the app and with extract",
        "refused",
    ),
    # ------------------------------------------------------------------ image decoding (item 3, 7)
    "image-huge-dimensions": (
        "images",
        "a 500 KB PNG of 13000 x 13000 px to extract --size 32 (5.6 GB resident "
        "before), under a 5 GiB address space; JPEG and EXIF-rotated files read reduced",
        "bounded",
    ),
    "image-extreme-aspect": (
        "images",
        "3 KB PNGs of 1 x 1,000,000 and 1,000,000 x 1 px (a 12.3 GB allocation before), under a 5 GiB address space",
        "bounded",
    ),
    "image-decode-memory": (
        "images",
        "an image whose decode does not fit in the memory available, in the API and extract",
        "refused",
    ),
    "image-int32-negative": ("images", "int32 and int16 TIFFs with negative values (all white before)", "safe"),
    "env-variable-typo": ("CLI", "DIFFINV_MAX_IMAGE_PIXEL (a typo), a 5000-character DIFFINV_* name", "refused"),
    # ------------------------------------------------------------------ features (items 7, 8)
    "features-fingerprint-null": (
        "features",
        "a feature file whose weights_fingerprint is null or missing (the "
        "weights check skipped without a word before)",
        "reported",
    ),
    "features-not-float": (
        "features",
        "int8, uint8, int64 and bool feature tensors, in the API and invert",
        "refused",
    ),
    "features-bad-sources": (
        "features",
        "sources as a dict, with a number, a NUL, a 50 MB name, the wrong count "
        "(after the inversion and printed in full before); 4096-character labels",
        "refused",
    ),
    "features-one-dimensional": ("features", "a 1-D feature tensor of 640 values", "refused"),
    "features-bad-metadata": (
        "features",
        "a negative input_size (a raw RuntimeError before), preprocessing, "
        "weights and fingerprint fields of the wrong kind",
        "refused",
    ),
    "features-disk-full": (
        "features",
        "a full disk while safetensors writes a feature file (no path named before)",
        "refused",
    ),
    # ------------------------------------------------------------------ run folders and records (items 5-8)
    "overwrite-user-folder": (
        "run folders",
        "bench --out myphotos --overwrite on a folder of a user's photos that was "
        "never a run (images/holiday_2019.png, wedding.jpg); every job's --overwrite (bench, "
        "audit, atlas, video, training, visualize, channels, dead-filters)",
        "kept",
    ),
    "records-symlink": (
        "run folders",
        "records.jsonl, a records shard or manifest.json replaced by a symbolic link; "
        "a link or a FIFO planted as a shard while the run is open",
        "refused",
    ),
    "records-non-finite": (
        "run folders",
        "records with a NaN PSNR, an infinite SSIM, a word for the seconds",
        "reported",
    ),
    "records-foreign-items": (
        "run folders",
        "records of an image, a layer or a seed not in the run, of no item at all, with an unhashable image",
        "reported",
    ),
    "records-duplicates": (
        "run folders",
        "a second record of a finished item (PSNR 99) placed before the real one",
        "reported",
    ),
    # ------------------------------------------------------------------ command line (items 4, 7, 8)
    "duplicate-layers": (
        "CLI",
        "a value given twice to a list flag: --layers blocks.1 blocks.1, --methods, --seeds, "
        "--images, --defenses, --channels, video clips",
        "refused",
    ),
    "workers-memory": (
        "CLI",
        "--workers 64 on 2 cores; --workers N whose processes do not fit in memory (bench, atlas)",
        "bounded",
    ),
    "seed-overflow": (
        "CLI",
        "--seed / --seeds 2**64, 2**32, -1 and a 5000-digit number, in every command with a seed",
        "refused",
    ),
    "training-memory": ("CLI", "train-decoder / train-mapper --hidden-channels 100000", "refused"),
    "bench-size-below-ssim": (
        "CLI",
        "--size 8 and 10, below SSIM's 11-pixel window, in every command that scores "
        "(bench, demo, atlas, audit, video, train-decoder, train-mapper)",
        "refused",
    ),
}


#: Cases proven by tests written before the catalogue (their nodes get the ``hostile`` marker in conftest.py).
PROVEN_BY: dict[str, tuple[str, ...]] = {
    "earlier-pickles-never-run": (
        "tests/test_run_folders.py::test_checkpoint_holds_no_pickle",
        "tests/test_run_folders.py::test_payload_in_any_checkpoint_file_never_runs",
        "tests/test_run_folders.py::test_planted_pickles_beside_a_checkpoint_are_ignored",
        "tests/test_run_folders.py::test_checkpoint_of_the_pickled_format_is_refused",
        "tests/test_run_folders.py::test_payload_as_manifest_is_refused",
        "tests/test_run_folders.py::test_payloads_in_a_bench_folder_never_run",
        "tests/test_run_folders.py::test_payloads_in_an_audit_folder_never_run",
        "tests/test_run_folders.py::test_payloads_in_a_video_folder_never_run",
    ),
    "earlier-runs-tab-roots": (
        "tests/test_app_exposed.py::test_runs_tab_serves_only_run_folders_under_the_runs_folder",
        "tests/test_app_exposed.py::test_visitor_gets_bounds_and_root_messages_in_the_page",
    ),
    "earlier-weights-roots": (
        "tests/test_app_exposed.py::test_weights_come_only_from_the_models_folder_and_never_show_a_file",
    ),
    "earlier-app-numbers": (
        "tests/test_app_exposed.py::test_bounded_int_names_the_flag_and_never_overflows",
        "tests/test_app_exposed.py::test_fields_out_of_bounds_get_the_flag_the_value_and_the_bound",
    ),
    "earlier-app-cancel-per-visitor": (
        "tests/test_app_exposed.py::test_closing_the_updates_cancels_and_the_next_run_waits_for_it",
        "tests/test_app_exposed.py::test_cancelled_job_stops_its_run_and_the_next_starts",
        "tests/test_app_exposed.py::test_closed_page_stops_its_run",
        "tests/test_app.py::test_one_run_per_session_and_errors_as_the_cli_says_them",
    ),
    "earlier-app-one-run-at-a-time": (
        "tests/test_app_exposed.py::test_one_run_at_a_time_across_visitors",
        "tests/test_app_exposed.py::test_a_run_that_waits_too_long_is_refused_as_busy",
    ),
    "earlier-app-memory": (
        "tests/test_app_exposed.py::test_a_job_that_does_not_fit_in_memory_is_refused_before_work",
    ),
    "earlier-kill-and-resume": (
        "tests/test_bad_inputs.py::test_ctrl_c_keeps_finished_work_and_exits_130",
        "tests/test_bench.py::test_interrupted_benchmark_keeps_finished_records",
        "tests/test_scaleout_bench.py::test_interrupted_two_process_run_is_finished_by_one",
        "tests/test_scaleout_training.py::test_two_process_run_killed_then_finished_by_one_process",
        "tests/test_audit.py::test_interrupted_audit_resumes_where_it_stopped",
    ),
    "earlier-concurrent-bench": (
        "tests/test_scaleout_bench.py::test_two_independent_commands_on_one_folder_share_the_work",
        "tests/test_scaleout_bench.py::test_a_claim_is_held_while_its_process_lives",
    ),
    "earlier-claim-links": (
        "tests/test_run_folders.py::test_a_claim_that_is_a_link_is_refused_and_its_target_untouched",
        "tests/test_run_folders.py::test_a_claims_folder_that_is_a_link_is_refused",
    ),
    "earlier-line-cut-short": ("tests/test_run_folders.py::test_a_record_after_a_line_cut_short_is_kept",),
    "earlier-exif-16bit": (
        "tests/test_bad_inputs.py::test_exif_orientation_is_applied",
        "tests/test_bad_inputs.py::test_sixteen_bit_images_are_scaled_not_clipped",
    ),
    "earlier-decompression-bomb": (
        "tests/test_bad_inputs.py::test_decompression_bomb_is_a_clear_error",
        "tests/test_bad_inputs.py::test_a_run_never_fails_on_its_own_outputs",
        "tests/test_bad_inputs.py::test_a_planted_larger_image_is_refused_as_an_own_output",
    ),
    "earlier-special-files": ("tests/test_bad_inputs.py::test_special_files_are_not_regular_files",),
    "earlier-bad-numbers": (
        "tests/test_bad_inputs.py::test_bad_numbers_are_argparse_errors",
        "tests/test_bad_inputs.py::test_devices",
        "tests/test_bad_inputs.py::test_bad_environment_variable_fails_at_start",
        "tests/test_bad_inputs.py::test_out_is_an_existing_file",
        "tests/test_bad_inputs.py::test_unwritable_output_folder",
        "tests/test_bad_inputs.py::test_a_folder_of_the_wrong_kind_is_named",
    ),
    "earlier-memory-cli": (
        "tests/test_bad_inputs.py::test_memory_refused_before_images_are_loaded",
        "tests/test_bad_inputs.py::test_huge_sizes_are_refused_with_the_estimate",
        "tests/test_bad_inputs.py::test_memory_refusal_in_invert_video_and_the_api",
    ),
    "earlier-disk-full": ("tests/test_bad_inputs.py::test_disk_full_names_the_file",),
}
