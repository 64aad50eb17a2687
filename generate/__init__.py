"""Stage 1: sample anchor/neighbor views from a generator and write them as webdataset shards."""
