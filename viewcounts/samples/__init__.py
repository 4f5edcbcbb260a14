"""Sample data the demo and the benchmarks replay."""
