"""prescaler: scale Kubernetes workloads ahead of forecast traffic peaks."""

__version__ = "0.1.0"
