"""The console script starts the local launcher's fork server before importing torch, and stops
it again when the command ends without starting a rank from it."""
from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from agentsync.console import trains_locally
from conftest import ENV, FORK_SERVER, ROOT


@pytest.mark.parametrize("argv, environ, expected", [
    ([], {}, True),                                            # no command: train
    (["--steps", "5"], {}, True),
    (["train", "--out", "run"], {}, True),
    (["train", "--launcher", "local"], {}, True),
    (["train", "--launcher=local"], {}, True),
    (["train", "--launcher", "ray"], {}, False),
    (["train", "--launcher=torchrun"], {}, False),
    (["train"], {"TORCHELASTIC_RUN_ID": "job"}, False),       # a rank torchrun started
    (["train", "--help"], {}, False),
    (["evaluate", "runs/x"], {}, False),
    (["compare", "--task", "digits"], {}, False),
])
def test_which_command_lines_start_the_fork_server_early(argv, environ, expected):
    assert trains_locally(argv, environ) is expected


def fork_servers() -> set[int]:
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        if FORK_SERVER in " ".join(proc.info["cmdline"] or []):
            found.add(proc.pid)
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, expected", [
    (["--strategy", "nope"], "unknown strategy"),                             # refused with the config
    (["--strategy", "diloco", "--set", "strategy.fragments=8"], "strategy.fragments"),  # by the preflight
])
def test_a_refused_train_command_leaves_no_fork_server_behind(tmp_path, args, expected):
    """The command's streams go to files, so it is seen to end as soon as its process does: a fork
    server left importing (it does not look at its parent for seconds) would still be alive then."""
    before = fork_servers()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        code = subprocess.run([sys.executable, "-m", "agentsync", "train", "--out", str(tmp_path / "run"), *args],
                              stdout=stdout, stderr=stderr, env=ENV, cwd=ROOT, timeout=50).returncode
    assert code == 2 and expected in err.read_text()
    assert fork_servers() - before == set()
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
def test_ranks_forked_from_the_server_find_its_imports_frozen():
    """The server freezes what its imports allocated, so a rank's collections (two as it leaves its
    process group) skip them: a process it forks starts with them in the permanent generation."""
    import gc

    from agentsync.forking import rank_context

    with rank_context().Pool(1) as pool:
        frozen = pool.apply(gc.get_freeze_count)
    assert frozen > 100_000  # torch and agentsync allocate ~300,000 tracked objects on import


@pytest.mark.timeout(120)
def test_a_torchrun_rank_freezes_its_imports(tmp_path):
    """A rank torchrun started imported everything itself: it freezes those imports before it joins
    its group, as the fork server does for the ranks it forks."""
    from agentsync.comm import free_port

    env = {**ENV, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    script = ("import gc, sys; from agentsync.cli import main; "
              f"code = main(['train', '--launcher', 'torchrun', '--workers', '1', '--steps', '2', '--out', {str(tmp_path / 'run')!r}]); "
              "print(gc.get_freeze_count()); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) > 100_000  # ~300,000 tracked objects from torch's and agentsync's imports
