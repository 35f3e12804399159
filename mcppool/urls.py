from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("balancing.api.urls")),
    path("", include("django_prometheus.urls")),
]
