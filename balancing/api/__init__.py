"""The app-facing REST API (`/api/v1/`): a raw-ASGI hot path for tool calls, django-ninja for
the rest and for the OpenAPI document."""
