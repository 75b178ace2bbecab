"""The bring-your-own-loop API, started by torchrun exactly as the README shows."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ENV, ROOT


def torchrun_example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(ROOT / "examples/byo_loop.py"), *args],
                          capture_output=True, text=True, timeout=150, env=ENV, cwd=ROOT)


@pytest.mark.timeout(180)
def test_byo_loop_example_trains_under_torchrun():
    result = torchrun_example("--steps", "300")
    assert result.returncode == 0, result.stderr
    accuracy, bytes_sent = re.search(r"accuracy ([\d.]+) bytes_sent (\d+)", result.stdout).groups()
    # 297 held-out digits; an MLP trained on 1,500 reaches well above 0.9 in 300 steps
    assert float(accuracy) >= 0.9
    # 64*64+64 + 64*10+10 = 4,810 parameters = 19,240 bytes; ring volume with W = 2 is 1x per step
    assert int(bytes_sent) == 300 * 19_240
