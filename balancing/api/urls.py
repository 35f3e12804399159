from django.urls import path

from balancing.api import docs
from balancing.api.views import api

urlpatterns = [
    path("v1/docs/assets/<str:name>", docs.asset, name="api-docs-asset"),
    path("v1/", api.urls),
]
