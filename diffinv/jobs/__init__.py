"""Long runs over many items, each writing into a run store (:mod:`diffinv.jobs.store`: a manifest of the
settings, records appended atomically, resume that refuses changed settings), split across processes and
machines by the job protocol (:mod:`diffinv.jobs.items`, :mod:`diffinv.jobs.claims`):

* :mod:`~diffinv.jobs.bench`: the per-layer benchmark of inversion methods (``diffinv demo`` is a preset);
* :mod:`~diffinv.jobs.atlas`: the leakage atlas of a target (trained models, intervals, gallery);
* :mod:`~diffinv.jobs.audit`: the privacy audit of a split point under defenses;
* :mod:`~diffinv.jobs.video`: the inversion of videos; :mod:`~diffinv.jobs.training`: decoder and mapper training.

The submodules are imported where they are used; this package imports none of them.
"""
