"""Stage 2: train an encoder on generated shards (or real images)."""
