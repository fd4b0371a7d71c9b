"""MetaRegistration engine: registration networks, losses, the iterative method, exact geometry, I/O and the CLI.

The engine never imports Slicer, VTK or Qt. See ``metareg.core.registration.register`` for the Python API and ``metareg --help``
for the command line.
"""

__version__ = "0.1.0"
