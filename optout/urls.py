from __future__ import annotations

app_name = "optout"
urlpatterns: list = []
