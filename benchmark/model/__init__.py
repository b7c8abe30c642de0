"""The CLIP wrapper (``ClipClassifier``), numerical precision and the frozen-feature cache."""
