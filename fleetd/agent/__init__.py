"""The agent: drives this machine's systemd to match its schedule."""
