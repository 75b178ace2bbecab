"""The bring-your-own loop runs unchanged under the parameter servers: server ranks serve inside
``setup()`` and exit there, so only the workers ever enter the loop."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from agentsync.sync.ps_protocol import HEADER_BYTES
from conftest import ENV, ROOT


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["ps-sync", "ps-async"])
def test_byo_loop_under_torchrun_runs_the_loop_on_workers_only(strategy):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
                             str(ROOT / "examples/byo_loop.py"), "--strategy", strategy, "--steps", "100"],
                            capture_output=True, text=True, timeout=200, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    entered = sorted(re.findall(r"rank (\d+) runs the training loop as worker (\d+)", result.stdout))
    assert entered == [("0", "0"), ("1", "1")]  # rank 2, the server, never came out of setup()
    accuracy, bytes_sent = re.search(r"accuracy ([\d.]+) bytes_sent (\d+)", result.stdout).groups()
    assert float(accuracy) >= 0.5  # it learned (chance is 0.1); asynchronous arrival order moves the exact figure
    # 4,810 parameters = 19,240 bytes pushed per step, plus the header (one server)
    assert int(bytes_sent) == 100 * (19_240 + HEADER_BYTES)
