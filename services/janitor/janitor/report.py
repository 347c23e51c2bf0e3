"""What a housekeeping run did, for logs, task results and ``registry-admin``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# Called once for every item a run examines.
Progress = Callable[[], None] | None


@dataclass
class Report:
    job: str
    examined: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    kept: int = 0
    moved: int = 0
    dry_run: bool = False
    skipped: str | None = None  # why the job did not run (another replica holds its lease)
    would_delete: list[str] = field(default_factory=list)
    resume_after: str | None = None  # a walk stopped there, to go on from there

    def tick(self, progress: Progress) -> None:
        self.examined += 1
        if progress is not None:
            progress()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.skipped:
            return f"{self.job}: skipped ({self.skipped})"
        verb = "would delete" if self.dry_run else "deleted"
        unfinished = f", goes on after {self.resume_after}" if self.resume_after else ""
        return (
            f"{self.job}: examined {self.examined}, {verb} {self.deleted} "
            f"({self.bytes_freed} bytes), moved {self.moved}, kept {self.kept}{unfinished}"
        )
