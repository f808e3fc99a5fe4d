"""The accelerators: ``cpu`` (the compiled C extension) and ``cuda`` (hand-written CuPy
kernels). Each implements some of the ops of ``cnn_xp.ops`` (the reference) with exactly
the reference's function names, signatures and semantics, and says which in ``OPS``;
``status()`` tells whether it can run here. Only ``cnn_xp.dispatch`` imports this package
(lazily), and chooses per device and op which implementation runs; the reference never
imports it.
"""
