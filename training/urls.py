"""The manager's console (pages under /p/<slug>/console/)."""
from django.urls import path

urlpatterns: list = []
