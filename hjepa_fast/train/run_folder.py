"""Re-exports the run-folder helpers of ``hjepa_fast.runs`` under their former module name."""
from hjepa_fast.runs import LOCK, RunLock, create_run_dir, remove_stale_temporaries, write_config

__all__ = ["LOCK", "RunLock", "create_run_dir", "remove_stale_temporaries", "write_config"]
