"""The site's front door: `/`, the admin's "View site" link and the favicon."""

from __future__ import annotations

import re

import pytest
from django.test import Client


@pytest.mark.django_db
def test_root_for_anonymous_visitor_goes_to_login_then_dashboard(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/dashboard/"
    assert client.get(response["Location"]).status_code == 200


@pytest.mark.django_db
def test_root_for_signed_in_operator_goes_to_dashboard(admin_client: Client) -> None:
    response = admin_client.get("/", follow=True)
    assert response.redirect_chain == [("/dashboard/", 302)]
    assert response.status_code == 200


@pytest.mark.django_db
def test_admin_view_site_link_reaches_the_dashboard(admin_client: Client) -> None:
    index = admin_client.get("/admin/").content.decode()
    link = re.search(r'<a href="([^"]+)">View site</a>', index)
    assert link is not None
    assert admin_client.get(link.group(1), follow=True).request["PATH_INFO"] == "/dashboard/"


@pytest.mark.django_db
def test_favicon_is_served_and_named_by_every_page(client: Client, admin_client: Client) -> None:
    icon = client.get("/favicon.ico", follow=True)
    assert icon.status_code == 200
    assert icon["Content-Type"].startswith("image/svg+xml")
    pages = [(client, "/admin/login/"), (admin_client, "/admin/"), (admin_client, "/dashboard/")]
    for visitor, page in pages:
        html = visitor.get(page).content.decode()
        assert re.search(r'<link rel="icon" href="[^"]*favicon\.svg"', html), page
