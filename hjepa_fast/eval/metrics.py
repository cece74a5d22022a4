"""Re-exports ``hjepa_fast.metrics`` (collapse diagnostics: spread, RankMe) under its former name: the
trainer logs them and ``hjepa eval`` reports them, so the module sits below both."""
from hjepa_fast.metrics import MIN_RANKME, MIN_SPREAD, collapse_report, feature_spread, rankme

__all__ = ["MIN_RANKME", "MIN_SPREAD", "collapse_report", "feature_spread", "rankme"]
