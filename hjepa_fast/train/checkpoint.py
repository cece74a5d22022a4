"""Re-exports ``hjepa_fast.checkpoint`` (atomic checkpoint files, safe loads, RNG state) under its former
name: training, evaluation and planning all read checkpoints, so the module sits below all three."""
from hjepa_fast.checkpoint import (
    TRUST_ENV,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    trusted,
)

__all__ = ["TRUST_ENV", "load_checkpoint", "load_model_state", "rng_state", "save_checkpoint", "set_rng_state",
           "trusted"]
