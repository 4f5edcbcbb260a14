"""Entry points: the streaming job, the batch recompute, and the options they share.

Importing the package hides the one third-party warning no pin can fix
(``hide_unfixable_warnings``), so the job's entry points (``python -m pipelines.streaming``)
and the ``viewcounts`` command, which imports this package first, start quiet."""

import warnings


def hide_unfixable_warnings() -> None:
    """Hide the one third-party warning no pin can fix: google-api-core and google-auth warn
    (FutureWarning, once per client package imported) that grpcio < 1.83 lacks post-quantum TLS,
    and apache-beam 2.70 requires grpcio < 1.66 on Python 3.11 (Beam 2.74 allows 1.83: drop this
    with that upgrade). Beam's crcmod warning is fixed by its pin in requirements.lock instead."""
    warnings.filterwarnings(
        "ignore",
        category=FutureWarning,
        message=r"(Package \S+ depends on grpcio, .*)?grpcio < 1\.83\.0 does not support Post-Quantum",
    )


hide_unfixable_warnings()
