"""Imported by the local launcher's fork server alone (it is in ``PRELOAD``).

The server stops when its launcher exits; it then leaves without tearing down the interpreter,
so whoever reads the job's output (a pipe the server holds too) gets its end at once, not half a
second later. The ranks it forks end through ``os._exit`` and never reach this.
"""
from agentsync.leave import leave_after_exit_handlers

leave_after_exit_handlers(0)
