from agentsync.console import entry

entry()
