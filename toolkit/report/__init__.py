"""Reports: the HDF5 layout (``h5``: runs; ``groups``: settings groups, /train, run copies), tables
(``tables``) and plots (``plots``). The only package that opens HDF5 files.

Reads files and plain arrays only; never imports the bound engine or the trainer (architecture.md).
The layout is documented in ``toolkit.report.h5``.
"""
from .h5 import (COLUMNS, FORMAT, FORMAT_VERSION, METHOD_COLUMNS, MemoryRunWriter, Report, ReportWriter, RunRecord,
                 RunWriter, check_out, partial_path, read_report)
from .tables import HEADERS, format_table, summarize, table_rows

__all__ = ["COLUMNS", "FORMAT", "FORMAT_VERSION", "METHOD_COLUMNS", "MemoryRunWriter", "Report", "ReportWriter", "RunRecord",
           "RunWriter", "check_out", "partial_path", "read_report", "HEADERS", "format_table", "summarize",
           "table_rows"]
