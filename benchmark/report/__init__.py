"""Reporting: records -> selection, tables, statistics and plots. Reads files only."""
