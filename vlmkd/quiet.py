"""Scoped silencing of transformers' own progress bars ("Loading weights", "Writing model shards").

vlmkd prints its own progress for each stage; transformers' per-tensor bars for a load or save that takes
well under a second would only interleave with it. The previous state is restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def transformers_bars_off() -> Iterator[None]:
    """Within the block, transformers draws no progress bars; outside it, as before."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()
