"""Stand-ins for a Kubernetes cluster and profefe, used by the tests, the benchmarks and the demo."""
