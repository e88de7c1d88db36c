"""The manager's console (pages under /p/<slug>/console/)."""
from django.urls import path

from training.console import views

urlpatterns = [
    path("p/<slug:slug>/console/", views.dashboard, name="console-dashboard"),
    path("p/<slug:slug>/console/runs/", views.runs, name="console-runs"),
    path("p/<slug:slug>/console/runs/new/", views.run_new, name="console-run-new"),
    path("p/<slug:slug>/console/runs/<int:run_id>/", views.run_detail, name="console-run"),
    path("p/<slug:slug>/console/runs/<int:run_id>/cancel/", views.run_cancel_view, name="console-run-cancel"),
    path("p/<slug:slug>/console/runs/<int:run_id>/retry/", views.run_retry_view, name="console-run-retry"),
    path("p/<slug:slug>/console/reward-models/", views.reward_models, name="console-reward-models"),
    path("p/<slug:slug>/console/leaderboard/", views.leaderboard, name="console-leaderboard"),
    path("p/<slug:slug>/console/guard/", views.guard, name="console-guard"),
    path("p/<slug:slug>/console/loop/", views.loop, name="console-loop"),
    path(
        "p/<slug:slug>/console/checkpoints/<int:checkpoint_id>/promote/", views.promote, name="console-promote"
    ),
    path("p/<slug:slug>/console/datasets/", views.datasets_view, name="console-datasets"),
    path("p/<slug:slug>/console/datasets/freeze/", views.freeze, name="console-freeze"),
    path(
        "p/<slug:slug>/console/datasets/<int:snapshot_id>/download/",
        views.snapshot_download,
        name="console-snapshot-download",
    ),
    path("p/<slug:slug>/console/annotators/", views.annotators, name="console-annotators"),
    path("p/<slug:slug>/console/annotators/standing/", views.annotator_standing, name="console-annotator-standing"),
    path("p/<slug:slug>/console/annotators/fit/", views.annotators_fit, name="console-annotators-fit"),
]
