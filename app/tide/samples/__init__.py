"""Sample tasks: what real workloads do, for demos, benchmarks and the end-to-end tests."""
