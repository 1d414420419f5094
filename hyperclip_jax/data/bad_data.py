"""Bad samples: skipped, counted (`data/skipped/<reason>` metrics), logged once per reason, never fatal.

A source or preprocessing op raises `BadSample(reason, detail)`; the pipeline catches it, moves on to the next
sample and adds one to that reason's count. Counts travel with the batches (so worker processes report them
too) and live in the iterator state, so a resumed run keeps counting from where it stopped.
"""
import logging

import numpy as np

REASONS = (
    "bad_image",          # undecodable or truncated image bytes
    "image_too_large",    # more pixels than the decode op allows (decompression bomb guard)
    "image_too_small",    # smaller than a crop op's size (resize first to keep such images)
    "missing_image",      # a webdataset sample without an image member, or a manifest row without a path
    "missing_file",       # a manifest image path that cannot be read
    "empty_caption",      # caption present but blank
    "missing_caption",    # no caption (no txt member, no such json key)
    "bad_record",         # an unreadable json member or manifest row
    "truncated_tar",      # a shard ending mid-member: the samples before the cut are kept
    "unreadable_shard",   # a shard that cannot be opened or is not a tar file
)


class BadSample(Exception):
  """One sample (or shard) the pipeline skips; `reason` is one of REASONS."""

  def __init__(self, reason: str, detail: str = ""):
    if reason not in REASONS:
      raise ValueError(f"bad-sample reason {reason!r} is unknown; known: {', '.join(REASONS)}")
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason, self.detail = reason, detail


def zero_counts() -> np.ndarray:
  """int64 [len(REASONS)]: one counter per reason."""
  return np.zeros(len(REASONS), np.int64)


def count(counts: np.ndarray, reason: str) -> None:
  counts[REASONS.index(reason)] += 1


class SkipLog:
  """Running totals per reason; warns once per reason the first time it is seen (in this process)."""

  def __init__(self, totals: dict[str, int] | None = None):
    """totals: {reason: count} from a saved state (reasons this version does not know are dropped)."""
    self.totals = zero_counts()
    for reason, n in (totals or {}).items():
      if reason in REASONS:
        self.totals[REASONS.index(reason)] = int(n)
    self._warned = set()

  def add(self, counts: np.ndarray, details: dict[str, str] | None = None) -> None:
    counts = np.asarray(counts, np.int64).reshape(-1, len(REASONS)).sum(0)
    self.totals += counts
    for i in np.flatnonzero(counts):
      reason = REASONS[i]
      if reason not in self._warned:
        self._warned.add(reason)
        example = (details or {}).get(reason, "")
        logging.warning("data: skipping bad samples (%s)%s; counted in data/skipped/%s", reason,
                        f", e.g. {example}" if example else "", reason)

  def metrics(self) -> dict[str, int]:
    return {f"data/skipped/{r}": int(n) for r, n in zip(REASONS, self.totals)}

  def state(self) -> dict[str, int]:
    return {r: int(n) for r, n in zip(REASONS, self.totals)}
