"""The site's own pages: `/` and `/favicon.ico`. Everything else lives in the apps."""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import reverse


def home(request: HttpRequest) -> HttpResponse:
    """A signed-in operator lands on the dashboard; anyone else on the login, then the dashboard.

    This is where `make run`'s printed URL and the admin's "View site" link point.
    """
    dashboard = reverse("dashboard:overview")
    if request.user.is_active and request.user.is_staff:
        return redirect(dashboard)
    return redirect_to_login(dashboard)


def favicon(request: HttpRequest) -> HttpResponse:
    # Browsers ask for /favicon.ico on every page that names no icon (the API docs, errors).
    return HttpResponseRedirect(static("mcppool/favicon.svg"))
