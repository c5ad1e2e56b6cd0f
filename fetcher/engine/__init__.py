"""The Docker engine, as the job pipeline uses it: the job's image (`pull`), its container
(`container`: create, start, wait, stop, remove), the container's output (`output`), the root-owned
leftovers of a job directory (`purge`), and what the engine's messages mean (`errors`)."""
