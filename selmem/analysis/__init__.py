"""Comparisons, reports, inspection and plots (matplotlib is imported only where it is used)."""
