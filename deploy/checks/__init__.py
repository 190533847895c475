"""The checks of deploy/check.py, one module per kind of file (see check.py's docstring)."""
