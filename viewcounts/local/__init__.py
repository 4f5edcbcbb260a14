"""Local infrastructure: the Pub/Sub and Bigtable emulators, a Flink session cluster and its Python
worker pool, a fault proxy, resource provisioning, and a running Flink job's metrics."""
