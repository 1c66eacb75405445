"""What the test command (tests/) and the benchmark (bench/) share: harness.stack starts a copy of the stack."""
