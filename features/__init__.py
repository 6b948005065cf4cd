"""Per-entity state as fixed-size numeric rows and the Numba kernels that update and read it."""
