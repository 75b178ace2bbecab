"""Imported by the local launcher's fork server alone (it is in ``PRELOAD``).

The server stops when its launcher exits; it then leaves without tearing down the interpreter,
so whoever reads the job's output (a pipe the server holds too) gets its end at once, not half a
second later. The ranks it forks end through ``os._exit`` and never reach this.

Here, unlike in the CLI's process, multiprocessing registered its exit handler before agentsync
was imported, so that one is skipped: it joins ``Process`` children, and the server has none (it
forks its ranks with ``os.fork`` and reaps them itself).

Imported last, it also freezes what the imports before it allocated (:func:`freeze_imports`),
for the ranks it forks.
"""
from agentsync.launch import freeze_imports
from agentsync.leave import leave_after_exit_handlers

leave_after_exit_handlers(0)
freeze_imports()
