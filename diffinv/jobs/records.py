"""What the records of a job of work items hold: the shared part of the manifest (:func:`item_settings`), a
record's label and scores of a reconstruction (:func:`image_label`, :func:`image_scores`), and the merge of the
records of every process into one per item of the run (:func:`merge_records`), records not trusted as read.

Example:
    >>> records = merge_records(store.records(), key, (layers, methods, seeds, images), notes=notes)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from ..io import pixels_fingerprint

__all__ = ["image_label", "image_scores", "item_settings", "merge_records", "record_key"]


def record_key(key: Callable[[Mapping], tuple], record: Mapping) -> tuple | None:
    """``key(record)``, or ``None`` when the record names no item (a field of the key missing, a value that
    cannot be a key)."""
    try:
        k = key(record)
        hash(k)
    except (KeyError, TypeError, AttributeError):
        return None
    return k


def merge_records(
    records: Iterable[Mapping],
    key: Callable[[Mapping], tuple],
    order: Sequence[Sequence] | None = None,
    *,
    own: Iterable[tuple] | None = None,
    notes: list[str] | None = None,
) -> list[dict]:
    """One record per item of the run, in the settings' order.

    Records are not trusted as read: one whose key is not an item of this run (a field missing; with
    ``order``, a value not among the settings' ones; with ``own``, a key not in it) is left out, and of an
    item recorded more than once the last written counts (records are appended, so a later record is a
    redone item). Each is said in ``notes`` (a list the caller passes, e.g. for the tables and a warning).

    Args:
        order: the values of each field of the key in the settings' order (``[layers, methods, ...]``); the
            records are sorted by it.
        own: the keys of every item of the run (when the fields' values alone do not say it).
    """
    ranks = None if order is None else [{v: i for i, v in enumerate(values)} for values in order]
    own = None if own is None else set(own)
    unique: dict[tuple, dict] = {}
    repeated: dict[tuple, int] = {}
    foreign = 0
    for record in records:
        k = record_key(key, record)
        if (
            k is None
            or (own is not None and k not in own)
            or (ranks is not None and (len(k) != len(ranks) or any(v not in r for r, v in zip(ranks, k))))
        ):
            foreign += 1
            continue
        if k in unique:
            repeated[k] = repeated.get(k, 1) + 1
        unique[k] = dict(record)
    if notes is not None:
        if foreign:
            notes.append(
                f"{foreign} record{'s' if foreign > 1 else ''} of items that are not in this run (another "
                f"layer, method, seed or image, or no item at all) left out."
            )
        if repeated:
            shown = "; ".join(" ".join(str(v) for v in k if v != "") for k in list(repeated)[:3])
            more = f" and {len(repeated) - 3} more" if len(repeated) > 3 else ""
            notes.append(
                f"{len(repeated)} item{'s have' if len(repeated) > 1 else ' has'} several records "
                f"({shown}{more}): the last written of each is kept."
            )
    if ranks is None:
        return list(unique.values())
    return [unique[k] for k in sorted(unique, key=lambda k: tuple(r[v] for r, v in zip(ranks, k)))]


def item_settings(
    target,
    images: torch.Tensor,
    sources: Sequence[str],
    layers: Sequence[str],
    seeds: Sequence[int],
    batch_size: int,
    device: torch.device,
    *,
    labels: torch.Tensor | None = None,
    judge=None,
    **job,
) -> dict:
    """The manifest of a job of work items: what every such job records, and the job's own settings.
    ``labels`` (:func:`~diffinv.judge.labels_tensor`) and ``judge`` are recorded only when given, so that
    runs without them keep the manifests they had before."""
    return {
        "target": target.identity(),
        "layers": list(layers),
        **job,
        "seeds": list(seeds),
        "batch_size": int(batch_size),
        "image_size": list(images.shape[-2:]),
        "images": list(sources),
        "images_fingerprint": pixels_fingerprint(images),
        "device": device.type,
        **({"labels": [image_label(labels, i) for i in range(len(labels))]} if labels is not None else {}),
        **({"judge": judge.identity()} if judge is not None else {}),
    }


def image_label(labels: torch.Tensor | None, i: int) -> int | None:
    """Image ``i``'s true class as a record holds it (``labels``: :func:`~diffinv.judge.labels_tensor`,
    ``-1`` where unknown): ``None`` where unknown."""
    return None if labels is None or labels[i] < 0 else int(labels[i])


def image_scores(scores: Mapping, j: int) -> dict:
    """Image ``j``'s values of per-image ``scores`` (:func:`~diffinv.metrics.reconstruction_scores`), as a
    record holds them: floats, ``None`` where a score does not apply (or is NaN: an unknown label)."""
    values = {}
    for metric, column in scores.items():
        value = None if column is None else float(column[j])
        values[metric] = None if value is None or math.isnan(value) else value
    return values
