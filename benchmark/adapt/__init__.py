"""The method author's toolbox: the ``Adapter`` base class and its loop, unlabeled data, views and
augmentations, losses, OOD scores and the pieces methods share (EMA, masking, self-training)."""
