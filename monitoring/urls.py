"""Dashboard pages, mounted at /dashboard/ by `mcppool.urls`."""

from __future__ import annotations

from django.urls import path

from monitoring import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("pools/<slug:slug>/", views.pool_detail, name="pool"),
    path("pools/<slug:slug>/servers/<str:name>/", views.server_detail, name="server"),
]
