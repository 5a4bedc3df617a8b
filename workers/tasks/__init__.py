"""One module per job action; each task takes a job id and nothing else."""
