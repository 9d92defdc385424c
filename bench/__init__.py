"""copylab benchmarks (`make bench`): figures with their targets, never timed assertions in tests."""
