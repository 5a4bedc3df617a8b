"""The steps of image jobs, by kind of work: the API plans them when it makes a job, and the
worker starts each by the same `Step`, so both name them alike (app/jobs/steps.py)."""

from __future__ import annotations

from app.jobs.steps import Step

# An import: the image comes into the engine as its origin says, then every import verifies and
# saves it alike.
PULL = Step("Pull", "Pulling the image from its registry")
FETCH_CONTEXT = Step("Fetch context", "Fetching the build context")
BUILD = Step("Build", "Building the image from its Dockerfile")
LOAD = Step("Load", "Loading the uploaded image tar into the engine")
VERIFY = Step("Verify", "Reading the image's configuration and size")
SAVE = Step("Save", "Tagging the image in the engine of this node")

PULL_STEPS = (PULL, VERIFY, SAVE)
BUILD_STEPS = (FETCH_CONTEXT, BUILD, VERIFY, SAVE)
LOAD_STEPS = (LOAD, VERIFY, SAVE)

# A delete, on the node that holds the image.
REMOVE = Step("Remove", "Removing the image from the engine of the node that holds it")
DELETE_STEPS = (REMOVE,)

# A prune, and a source's deletion: find the images, then hand them to their nodes' deletes.
PLAN = Step("Plan", "Finding the images of the sources")
HAND_OUT = Step("Remove", "Handing the images to the nodes that hold them")
REMOVE_IMAGES_STEPS = (PLAN, HAND_OUT)
