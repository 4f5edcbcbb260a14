"""Entry points: the streaming job, the batch recompute, and the options they share.

Importing the package hides the third-party warnings no pin or change here can fix
(``hide_unfixable_warnings``), so the job's entry points (``python -m pipelines.streaming``)
and the ``viewcounts`` command, which imports this package first, start quiet."""

import logging
import re
import warnings

# Beam's construction-time lints (apache_beam.transforms.core) that say nothing true of this job:
# - Beam's own PeriodicImpulse DoFn mixes yield and return (apache/beam#22969 is Beam's lint);
# - FirePanes' key is an int pane shard (transforms.aggregate.PreAggregate), which
#   FastPrimitivesCoder encodes deterministically; declaring a typed key coder instead would
#   change the state keys of running jobs (an update could not keep their state).
_BEAM_LINTS = re.compile(
    r"Using yield and return in the process method of <class "
    r"'apache_beam\.transforms\.periodicsequence\.ImpulseSeqGenDoFn'>"
    r"|Key coder FastPrimitivesCoder for transform <ParDo\(PTransform\) label=\[ParDo\(FirePanes\)\]>"
)


def _not_a_known_beam_lint(record: logging.LogRecord) -> bool:
    return not _BEAM_LINTS.match(record.getMessage())


def hide_unfixable_warnings() -> None:
    """Hide the one third-party warning no pin can fix: google-api-core and google-auth warn
    (FutureWarning, once per client package imported) that grpcio < 1.83 lacks post-quantum TLS,
    and apache-beam 2.70 requires grpcio < 1.66 on Python 3.11 (Beam 2.74 allows 1.83: drop this
    with that upgrade). Beam's crcmod warning is fixed by its pin in requirements.lock instead.
    Also drops two of Beam's construction-time lints that do not apply (``_BEAM_LINTS``)."""
    warnings.filterwarnings(
        "ignore",
        category=FutureWarning,
        message=r"(Package \S+ depends on grpcio, .*)?grpcio < 1\.83\.0 does not support Post-Quantum",
    )
    logging.getLogger("apache_beam.transforms.core").addFilter(_not_a_known_beam_lint)


hide_unfixable_warnings()
