"""Signals that let later apps react to the annotate app without annotate importing them.

The apps depend one way (annotate ← rewardmodel ← training), so a vote cannot call
the retrain trigger directly; ``rewardmodel`` connects a receiver to this signal.
Signals are sent after the transaction commits.
"""
from django.dispatch import Signal

# Sent with project_id: int and count: int (how many votes were just recorded); a vote through the
# page or the API also sends vote_ids: its id, as a one-element tuple.
votes_recorded = Signal()
