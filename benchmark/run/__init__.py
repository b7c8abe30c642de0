"""Orchestration: the sweep (grid of run specs), the runner (one spec -> one record on disk), the
evaluator and the launchers."""
