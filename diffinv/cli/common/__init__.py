"""The command line's one vocabulary: every flag that means the same thing is defined once, here.

* :mod:`.argtypes`: argument types and validators (``--size``, ``--seed``, ``--out``, ``--device``) and
  :class:`UsageError`, reported as ``diffinv CMD: error: ...`` with exit code 2;
* :mod:`.parser`: the parser pieces the subcommands share (``add_*_arg(s)``);
* :mod:`.method_flags`: the methods' flags, generated from what each method declares;
* :mod:`.from_args`: what a subcommand builds from its parsed flags (images, labels, judge, target, workers)
  and the checks before any work (memory).

Each subcommand is one module of :mod:`diffinv.cli` and uses these as ``common.NAME``.
"""

from .argtypes import (
    MAX_SEED,
    UsageError,
    check_out_dir,
    check_out_file,
    check_unique_lists,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_device,
    seed_int,
    unit_float,
)
from .from_args import (
    check_decoder_training_fits,
    check_judge_arg,
    check_memory_fits,
    decoder_trainer_from_args,
    early_stop_from_args,
    fit_workers,
    image_count,
    judge_from_args,
    labels_from_args,
    launch_target_and_judge,
    load_images_and_labels,
    target_from_args,
    workers_from_args,
)
from .method_flags import (
    HYBRID_METHODS,
    METHODS,
    MethodFlag,
    add_method_args,
    check_model_arg,
    inverter_factory,
    method_flags,
    method_options_from_args,
)
from .parser import (
    DEFAULT_SIZE,
    add_decoder_training_args,
    add_device_arg,
    add_early_stop_args,
    add_image_source_args,
    add_images_arg,
    add_labels_judge_args,
    add_mixed_precision_arg,
    add_out_arg,
    add_overwrite_arg,
    add_size_arg,
    add_target_args,
    add_workers_arg,
)

__all__ = [
    "DEFAULT_SIZE",
    "HYBRID_METHODS",
    "MAX_SEED",
    "METHODS",
    "MethodFlag",
    "UsageError",
    "add_decoder_training_args",
    "add_device_arg",
    "add_early_stop_args",
    "add_image_source_args",
    "add_images_arg",
    "add_labels_judge_args",
    "add_method_args",
    "add_mixed_precision_arg",
    "add_out_arg",
    "add_overwrite_arg",
    "add_size_arg",
    "add_target_args",
    "add_workers_arg",
    "check_decoder_training_fits",
    "check_judge_arg",
    "check_memory_fits",
    "check_model_arg",
    "check_out_dir",
    "check_out_file",
    "check_unique_lists",
    "decoder_trainer_from_args",
    "early_stop_from_args",
    "fit_workers",
    "image_count",
    "inverter_factory",
    "judge_from_args",
    "labels_from_args",
    "launch_target_and_judge",
    "load_images_and_labels",
    "method_flags",
    "method_options_from_args",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "resolve_device",
    "seed_int",
    "target_from_args",
    "unit_float",
    "workers_from_args",
]
