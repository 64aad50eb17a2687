"""Stage 3: probe frozen features (linear, kNN, VOC07)."""
