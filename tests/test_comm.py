"""Comm's collectives over real processes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENV, ROOT


@pytest.mark.timeout(180)
def test_gather_bytes_delivers_every_payload_to_one_rank_only(tmp_path):
    """Checkpoint and summary state travel by gather, not all-gather: the root gets every rank's
    payload (lengths differ), the other ranks get None and never hold the others' state."""
    out = tmp_path / "got"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
                             str(ROOT / "tests/scripts/gather_bytes.py"), str(out)],
                            capture_output=True, text=True, timeout=150, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    got = {rank: json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(3)}
    assert got[0] is None and got[2] is None
    assert [bytes.fromhex(p) for p in got[1]] == [bytes([r]) * (r * 1000 + 1) for r in range(3)]


@pytest.mark.timeout(180)
def test_two_ranks_sum_a_small_tensor_by_one_exchange_bit_identical_to_the_ring(tmp_path):
    """Between two ranks a sum of at most 256 KiB is one exchange (one message each way, the whole
    tensor) instead of gloo's ring (two messages of half): the same bytes, and the same bits as
    gloo's ring all-reduce, values spanning seven orders of magnitude. Larger sums go by the ring."""
    out = tmp_path / "got"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(ROOT / "tests/scripts/exchange_sum.py"), str(out)],
                            capture_output=True, text=True, timeout=150, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):
        got = json.loads(Path(f"{out}.{rank}").read_text())
        assert got.pop("strided") is True
        for numel, counted in got.items():
            nbytes = 4 * int(numel)
            assert counted == {"identical": True, "bytes_sent": nbytes, "bytes_received": nbytes,
                               "messages": 1 if nbytes <= 256 * 1024 else 2}, (numel, counted)
