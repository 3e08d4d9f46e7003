"""Detail log lines: the Prefect run log keeps them, the terminal shows them only with `--verbose`.

A job's progress (submitted, position in queue, fal's own log lines such as "Processing frame N/M",
where its output went) is what the run log and the report are for; on the terminal, 200 jobs would
print ~1,000 of them over the progress bar. `log.info(msg, *args, extra=DETAIL)` marks a line.
"""

from __future__ import annotations

import logging

DETAIL_ATTR = "klingflow_detail"
DETAIL = {DETAIL_ATTR: True}


def is_detail(record: logging.LogRecord) -> bool:
    return bool(getattr(record, DETAIL_ATTR, False))
