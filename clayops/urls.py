from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter

from . import api, metrics_view
from .converters import IdConverter

register_converter(IdConverter, "id")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/clay/callback/<id:webhook_id>/", api.clay_callback, name="clay-callback"),
    path("api/leads/<id:lead_id>/data", api.lead_data, name="lead-data"),
    path("healthz", api.healthz, name="healthz"),
    path("readyz", api.readyz, name="readyz"),
    path("metrics", metrics_view.metrics, name="metrics"),
    path("django-rq/", include("django_rq.urls")),
    path("", include("dashboard.urls")),
]
