"""Image sources: where the images of a hub come from."""
