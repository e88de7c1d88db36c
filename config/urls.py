from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from annotate import api, views_events
from config.health import healthz
from config.openapi import openapi
from training import api as training_api

api_patterns = [
    path("openapi.json", openapi, name="api-openapi"),
    path("projects", api.projects, name="api-projects"),
    path("projects/<slug:slug>/comparisons/next", api.comparison_next_view, name="api-next"),
    path("comparisons/<int:comparison_id>/vote", api.vote, name="api-vote"),
    path("projects/<slug:slug>/prompts", api.prompts_import, name="api-prompts"),
    path("projects/<slug:slug>/completions", api.completions_import, name="api-completions"),
    path("projects/<slug:slug>/export", api.export, name="api-export"),
    path("projects/<slug:slug>/events", views_events.events_api, name="api-events"),
    path("projects/<slug:slug>/reward-models/train", training_api.reward_model_train, name="api-rm-train"),
    path("projects/<slug:slug>/reward-models", training_api.reward_models, name="api-reward-models"),
    path("projects/<slug:slug>/runs", training_api.runs_start, name="api-runs-start"),
    path("runs/<int:run_id>", training_api.run_detail, name="api-run"),
    path("runs/<int:run_id>/cancel", training_api.run_cancel_view, name="api-run-cancel"),
]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", include(api_patterns)),
    path("", include("annotate.urls")),
    path("", include("training.urls")),
]
