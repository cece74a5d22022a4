"""A stand-in for a ``@triton.jit`` kernel that records each launch, for tests that check the launch
settings a public function is given reach the kernel."""
from __future__ import annotations


class LaunchSpy:
    """``kernel[grid](*args, **kwargs)`` runs the wrapped kernel and appends ``(grid, kwargs)`` to ``launches``."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch
