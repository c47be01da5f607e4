"""crawldex rescrape-worker: the RQ worker of the `rescrape` queue."""
