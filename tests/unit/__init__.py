"""Table-driven tests of pure functions: no database, Redis, engine or registry (`make unit`)."""
