"""Generated and re-exported Kubernetes bindings used by the library."""
