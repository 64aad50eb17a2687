"""genrep: generative models as a data source for multiview representation learning.

Stage 1 (`genrep.generate`) turns a generator into webdataset shards of anchor/neighbor views,
stage 2 (`genrep.train`) learns an encoder from them, stage 3 (`genrep.evaluate`) probes it.
The shard format (`genrep.shards`, `genrep.manifest`) is the contract every stage shares.
"""

__version__ = "0.2.0"
