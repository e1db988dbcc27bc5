"""Best-of-N data out: chosen and rejected answers in the formats TRL's trainers read.

:func:`aligntime.export.sources.read_groups` reads what aligntime wrote (a batch
output, an evaluation folder, a served audit log) as one :class:`Group` per request;
:func:`aligntime.export.formats.examples` turns groups into SFT, DPO or KTO rows.
"""

from __future__ import annotations

from aligntime.export.formats import ExportFilters, examples
from aligntime.export.sources import Group, Option, read_groups

__all__ = ["ExportFilters", "Group", "Option", "examples", "read_groups"]
