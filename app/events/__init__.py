"""Following a hub without polling: its events (recorded by the database, migration 0008), the
process's listener that wakes followers, and the notification stream served as Cycle serves it."""
