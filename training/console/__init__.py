"""The manager's console, in one room: ``views`` (thin: parse, authorize, call, render), ``forms``
(the runs filter, one start form per kind, promotion, snapshot freezing), ``selectors`` (reads),
``figures`` (page data → charts) over ``charts`` (server-rendered SVG), and ``datasets``
(snapshot downloads).

Runs start through ``training.starts.run_start`` like everywhere else; the leaderboard and
promotion are ``training.checkpoints``; annotator statistics are ``annotate.stats``.
"""
