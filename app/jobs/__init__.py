"""Jobs: the long work behind a 202, its state, steps and leases."""
