"""The commands for --framework django: the same names, options and exit codes."""
