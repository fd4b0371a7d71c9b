"""The application: the ``metareg`` command line, the demo, the worker a GUI runs as its child process, the data
builders behind ``metareg data fetch``, and report figures. Builds on :mod:`metareg.core` and
:mod:`metareg.learning`."""
