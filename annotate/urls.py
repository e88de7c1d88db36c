from django.urls import path

from annotate import views, views_edit, views_events, views_manage, views_people, views_review

urlpatterns = [
    path("", views.home, name="home"),
    path("p/<slug:slug>/guidelines/", views.guidelines, name="guidelines"),
    path("p/<slug:slug>/compare/", views.compare, name="compare"),
    path("p/<slug:slug>/compare/<int:comparison_id>/vote/", views.vote, name="vote"),
    path("p/<slug:slug>/compare/<int:comparison_id>/skip/", views.skip, name="skip"),
    path("p/<slug:slug>/compare/<int:comparison_id>/flag/", views.flag, name="flag"),
    path("p/<slug:slug>/compare/<int:comparison_id>/edit/", views_edit.edit, name="compare-edit"),
    path("p/<slug:slug>/votes/<int:vote_id>/undo/", views.undo, name="vote-undo"),
    path("p/<slug:slug>/votes/<int:vote_id>/strength/", views.vote_strength, name="vote-strength"),
    path("p/<slug:slug>/manage/flags/", views_review.flags_view, name="manage-flags"),
    path("p/<slug:slug>/manage/flags/resolve/", views_review.flag_resolve, name="manage-flags-resolve"),
    path("p/<slug:slug>/manage/webhooks/", views_events.webhooks_view, name="manage-webhooks"),
    path("p/<slug:slug>/events/", views_events.events_page_stream, name="events-stream"),
    path("p/<slug:slug>/manage/", views_manage.settings_view, name="manage-settings"),
    path("p/<slug:slug>/manage/import/", views_manage.import_view, name="manage-import"),
    path("p/<slug:slug>/manage/export/", views_manage.export_view, name="manage-export"),
    path("p/<slug:slug>/manage/export/download/", views_manage.export_download, name="manage-export-download"),
    path("projects/new/", views_people.project_new, name="project-new"),
    path("p/<slug:slug>/manage/members/", views_people.members_view, name="manage-members"),
    path("p/<slug:slug>/manage/members/<int:user_id>/role/", views_people.member_role, name="manage-member-role"),
    path("p/<slug:slug>/manage/members/<int:user_id>/remove/", views_people.member_remove, name="manage-member-remove"),
]
