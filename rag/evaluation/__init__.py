"""Evaluation: load question sets (``dataset``) and score predictions against them (``metrics``)."""
