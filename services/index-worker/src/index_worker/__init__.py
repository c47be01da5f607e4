"""crawldex index-worker: the RQ worker of the `indexing` queue."""
