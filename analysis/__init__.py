"""Analysis of stored ParaTAA results: verified loading, tables, figures and the audit of the paper's claims.

Reads only what the workflow stored (docs/STORAGE.md: Parquet, JSON, safetensors through its numpy API);
never imports torch. One command regenerates everything:

    python -m analysis --results results/<study> --out <dir> [--config config/<study>.yaml] [--strict]
"""

from .loaders import (
    IncompleteStudyError,
    ResultError,
    Run,
    Study,
    expected_cells,
    load_study,
    missing_cells,
    verify_run,
)
from .tables import (
    Threshold,
    authors_rule,
    flat_rule,
    paper_rule,
    parse_threshold,
    recount_steps,
    summary_table,
    with_step_scales,
)

__all__ = [
    "IncompleteStudyError",
    "ResultError",
    "Run",
    "Study",
    "Threshold",
    "authors_rule",
    "expected_cells",
    "flat_rule",
    "load_study",
    "missing_cells",
    "paper_rule",
    "parse_threshold",
    "recount_steps",
    "summary_table",
    "verify_run",
    "with_step_scales",
]
