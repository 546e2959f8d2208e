"""Sub-commands of the ``msfusion`` command line, one module each."""
