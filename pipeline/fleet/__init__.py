"""``segfuse fleet``: ``segfuse run`` / ``segfuse eval`` over many drives on Ray (docs/fleet.md).

``drives`` (which drives, content keys), ``worker`` (the per-process worker that keeps its models
open; no Ray in it), ``execute`` (the driver: plan, Ray actors, records, Ctrl-C), ``report``
(fleet report JSON/HTML, compare), ``cli``. Ray is imported only by ``execute.run_fleet``.
"""
