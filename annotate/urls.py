from django.urls import path

from annotate import views, views_manage

urlpatterns = [
    path("", views.home, name="home"),
    path("p/<slug:slug>/guidelines/", views.guidelines, name="guidelines"),
    path("p/<slug:slug>/compare/", views.compare, name="compare"),
    path("p/<slug:slug>/compare/<int:comparison_id>/vote/", views.vote, name="vote"),
    path("p/<slug:slug>/compare/<int:comparison_id>/skip/", views.skip, name="skip"),
    path("p/<slug:slug>/manage/", views_manage.settings_view, name="manage-settings"),
    path("p/<slug:slug>/manage/import/", views_manage.import_view, name="manage-import"),
    path("p/<slug:slug>/manage/export/", views_manage.export_view, name="manage-export"),
    path("p/<slug:slug>/manage/export/download/", views_manage.export_download, name="manage-export-download"),
]
