"""The ``kipc`` command line: one module per verb, argument definitions in :mod:`kipc.cli.args`."""
