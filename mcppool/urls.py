from django.contrib import admin
from django.urls import include, path

from mcppool import views
from monitoring import metrics

metrics.install()  # the mcppool_* collector, on the registry django-prometheus serves at /metrics

urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", views.favicon),
    path("admin/", admin.site.urls),
    path("api/", include("balancing.api.urls")),
    path("dashboard/", include("monitoring.urls")),
    path("", include("django_prometheus.urls")),
]
