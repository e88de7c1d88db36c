"""The console's charts: page data in, server-rendered SVG (``training.console.charts``) out."""
from __future__ import annotations

from annotate.stats import Agreement, AnnotatorStats
from rewardmodel.models import RewardModel
from training.checkpoints import Leaderboard
from training.console import charts
from training.console.guard import GuardPanel
from training.console.selectors import Dashboard, RunView

# Published human agreement on preference pairs (InstructGPT, Stiennon et al., Anthropic HH).
PUBLISHED_AGREEMENT = (0.63, 0.77)


def votes_per_day(data: Dashboard):
    return charts.bar_chart(
        [(day.strftime("%b %d"), n) for day, n in data.votes_per_day],
        title=f"Votes per day (last {len(data.votes_per_day)} days)",
        every_label=5,
    )


def queue_depth(data: Dashboard):
    return charts.bar_chart(
        [(label, n) for label, n, _ in data.queue], title="Open comparisons by why they were queued",
        color=charts.PALETTE[2], height=200, every_label=1,
    )


def run_metric_charts(view: RunView) -> list:
    return [
        charts.line_chart(
            [charts.Series(key, view.metrics[key])],
            title=key.replace("_", " "),
            x_label="step",
            percent="accuracy" in key,
            width=420,
            height=200,
        )
        for key in view.charted
    ]


def accuracy_against_votes(models: list[RewardModel], agreement: Agreement):
    """Held-out accuracy of each version against the votes it was trained on, under the agreement ceiling."""
    points = sorted((rm.votes, rm.accuracy) for rm in models if isinstance(rm.accuracy, (int, float)))
    hlines = []
    if agreement.decisive is not None:
        hlines.append(charts.HLine(agreement.decisive, f"annotators agree {agreement.decisive:.0%} (ceiling)"))
    low, high = PUBLISHED_AGREEMENT
    return charts.line_chart(
        [charts.Series("held-out accuracy", points, dots=True)],
        title="Held-out accuracy against votes trained on",
        x_label="votes in the snapshot",
        hlines=hlines,
        bands=[charts.Band(low, high, "people agree 63–77% in published work")],
        y_min=0.4,
        y_max=1.0,
        percent=True,
        width=960,
        height=300,
        empty="No reward model yet",
    )


def leaderboard_charts(board: Leaderboard) -> dict:
    rated = board.rated
    incumbent = board.incumbent.name if board.incumbent else None
    names = [e.checkpoint.name for e in rated]
    return {
        "intervals": charts.interval_chart(
            [(e.checkpoint.name, e.rating.score, e.rating.lower, e.rating.upper) for e in rated],
            title="Scores with 95% bootstrap intervals (incumbent in orange)",
            highlight=incumbent,
            empty="No human votes on checkpoint battles yet",
        ),
        "matrix": charts.heatmap(
            names,
            [list(row) for row in board.ranking.win_rate],
            counts=[list(row) for row in board.ranking.games],
            title="Win rate of the row against the column (ties count half)",
            empty="No battles yet",
        ),
    }


def agreement_by_annotator(stats: list[AnnotatorStats], agreement: Agreement):
    bars = [(s.username, s.agreement) for s in stats if s.agreement is not None][:40]
    hlines = [charts.HLine(agreement.observed, "project pairwise agreement")] if agreement.observed else []
    return charts.bar_chart(
        bars, title="Agreement with the others' majority on shared comparisons", percent=True,
        hlines=hlines, every_label=1, width=960, empty="No comparison has two votes yet",
    )


def guard_charts(panel: GuardPanel) -> dict:
    """Proxy reward against human win rate (flagged checkpoints marked), KL from the base, canary accuracy."""
    measured = [row for row in reversed(panel.checkpoints) if row.proxy_reward is not None]
    return {
        "proxy": charts.scatter_chart(
            [charts.Point(row.checkpoint.name, row.proxy_reward, row.win_rate, marked=bool(row.flag))
             for row in measured if row.win_rate is not None],
            title="Proxy reward against human win rate (flagged in orange)",
            x_label="mean reward-model score on the fixed prompts", y_label="battle win rate", y_percent=True,
            hlines=[charts.HLine(0.5, "even")], width=960,
            empty="No checkpoint has both a proxy reward and battle votes yet",
        ),
        "kl": charts.bar_chart(
            [(row.checkpoint.name, row.kl_from_base) for row in reversed(panel.checkpoints)
             if row.kl_from_base is not None],
            title="KL from the base on the fixed prompts (nats per answer)", color=charts.PALETTE[3],
            every_label=1, width=960, empty="No KL measured yet",
        ),
        "canary": charts.bar_chart(
            [(f"v{rm.version}", rm.metrics["canary_accuracy"]) for rm in reversed(panel.reward_models)
             if isinstance((rm.metrics or {}).get("canary_accuracy"), (int, float))],
            title="Reward-model accuracy on the canary set", percent=True, color=charts.PALETTE[2],
            hlines=[charts.HLine(0.5, "chance")], every_label=1, width=960,
            empty="No reward model has been scored on frozen canaries yet",
        ),
    }
