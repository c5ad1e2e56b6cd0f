"""GPU facts and the checks made on them before a job's container starts."""
