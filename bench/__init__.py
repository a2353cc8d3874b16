"""fleet-py benchmarks (`python -m bench`): figures printed, never asserted."""
