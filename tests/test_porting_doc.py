"""docs/porting.md runs: its python blocks, in order, on random data on a CPU (they assert that the ported
I-JEPA and V-JEPA 2 losses equal the peers' own)."""
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "porting.md"


def test_porting_doc_runs_and_matches_the_peers():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    assert namespace["ema"].step_count == 1  # the V-JEPA 2 block's EMA ran
