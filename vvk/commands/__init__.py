"""CLI command groups, one module each. Commands parse, call the library, and print.

Nothing here may import torch at module level: ``vvk --help`` and ``vvk <cmd> --help`` must stay
fast, so library imports happen inside the command functions.
"""
