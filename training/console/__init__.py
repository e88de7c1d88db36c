"""The manager's console: reads (``selectors``), run starts (``launch``) and dataset downloads (``datasets``).

The views are in ``training.views_console``; the leaderboard and promotion in ``training.checkpoints``;
annotator statistics in ``annotate.stats``.
"""
