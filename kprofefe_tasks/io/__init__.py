"""The doors to external systems: the Kubernetes API, pods' pprof endpoints, profefe, files (sinks, spool)."""
