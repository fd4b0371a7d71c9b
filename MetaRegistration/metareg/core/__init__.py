"""The registration library: exact geometry, image and landmark I/O, networks, losses, the iterative method, affine
pre-alignment, metrics, model files and cards, and :func:`metareg.core.registration.register`, which runs one pair.

Nothing here imports the learning stack (:mod:`metareg.learning`) or the application (:mod:`metareg.app`).
"""
