from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from config import api
from config.health import healthz

api_patterns = api.urls()

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", include(api_patterns)),
    path("", include("annotate.urls")),
    path("", include("training.urls")),
]
