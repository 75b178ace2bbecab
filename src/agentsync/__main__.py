from agentsync.cli import entry

entry()
