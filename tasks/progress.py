"""Progress for long loops: a terminal bar plus, inside a Prefect task run, a progress artifact."""

from __future__ import annotations

import logging
from types import TracebackType

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def _in_prefect_run() -> bool:
    try:
        from prefect.context import TaskRunContext

        return TaskRunContext.get() is not None
    except ImportError:  # pragma: no cover - prefect is a dependency
        return False


class Progress:
    """Context manager: ``with Progress(total, "distill") as p: p.update(loss=…)``."""

    def __init__(self, total: int, desc: str, unit: str = "step"):
        self.total, self.desc, self.done = total, desc, 0
        self._bar = tqdm(total=total, desc=desc, unit=unit, mininterval=1.0, dynamic_ncols=True)
        self._artifact_id = None
        self._last_pct = -1
        if _in_prefect_run():
            try:
                from prefect.artifacts import create_progress_artifact

                key = "".join(c if c.isalnum() else "-" for c in desc.lower())
                self._artifact_id = create_progress_artifact(progress=0.0, key=f"{key}-progress",
                                                             description=f"{desc}: progress")
            except Exception as exc:  # progress reporting must never break training
                log.debug("no Prefect progress artifact: %s", exc)

    def update(self, n: int = 1, **postfix: float) -> None:
        """Advance by ``n`` steps, showing ``postfix`` values (e.g. loss) on the bar."""
        self.done += n
        self._bar.update(n)
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        pct = int(100 * self.done / max(self.total, 1))
        if self._artifact_id is not None and (pct >= self._last_pct + 5 or self.done == self.total):
            self._last_pct = pct
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact_id, progress=float(pct))
            except Exception as exc:
                log.debug("progress artifact update failed: %s", exc)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._bar.close()
