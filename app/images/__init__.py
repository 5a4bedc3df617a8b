"""Images: a point-in-time pull, build or upload of a source, held by a worker node's engine."""
