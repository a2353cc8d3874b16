"""The engine: leader-elected scheduling of units onto machines."""
