from django.urls import path

from . import actions, connect, import_actions, timeline_views, views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("webhooks/<id:webhook_id>/force-open", actions.breaker_force_open, name="breaker_force_open"),
    path("webhooks/<id:webhook_id>/reset", actions.breaker_reset, name="breaker_reset"),
    path("webhooks/<id:webhook_id>/drain-deferred", actions.offline_drain, name="offline_drain"),
    path("leads/", views.leads, name="leads"),
    path("leads/<id:lead_id>/", views.lead_detail, name="lead_detail"),
    path("leads/resolve", actions.leads_resolve, name="leads_resolve"),
    path("imports/", views.imports, name="imports"),
    path("imports/upload", actions.import_upload, name="import_upload"),
    path("imports/<id:import_id>/", views.import_detail, name="import_detail"),
    path("imports/<id:import_id>/invalid-rows.csv", views.import_errors_csv, name="import_errors_csv"),
    path("imports/<id:import_id>/report", import_actions.import_report, name="import_report"),
    path(
        "imports/<id:import_id>/duplicates.csv",
        import_actions.import_duplicates_csv,
        name="import_duplicates_csv",
    ),
    path("imports/<id:import_id>/cancel", import_actions.import_cancel, name="import_cancel"),
    path("imports/<id:import_id>/dlq/retry", import_actions.import_dlq_retry, name="import_dlq_retry"),
    path("imports/<id:import_id>/dlq/discard", import_actions.import_dlq_discard, name="import_dlq_discard"),
    path("dlq/", views.dlq, name="dlq"),
    path("dlq/<id:entry_id>/", views.dlq_entry, name="dlq_entry"),
    path("dlq/drain/preview", views.dlq_drain_preview, name="dlq_drain_preview"),
    path("dlq/drain", actions.dlq_drain, name="dlq_drain"),
    path("dlq/retry", actions.dlq_retry, name="dlq_retry"),
    path("dlq/discard", actions.dlq_discard, name="dlq_discard"),
    path("audit/", views.audit, name="audit"),
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/ack", actions.alert_ack, name="alert_ack"),
    path("alerts/mute", actions.alert_mute, name="alert_mute"),
    path("connect/", connect.connect, name="connect"),
    path("connect/create", connect.connect_create, name="connect_create"),
    path("connect/<id:webhook_id>/", connect.connect_webhook, name="connect_webhook"),
    path("connect/<id:webhook_id>/status", connect.connect_status, name="connect_status"),
    path("connect/<id:webhook_id>/rotate-secret", connect.connect_rotate, name="connect_rotate"),
    path("connect/<id:webhook_id>/test-row", connect.connect_test, name="connect_test"),
    path("timeline/", timeline_views.timeline, name="timeline"),
    path("timeline/data", timeline_views.timeline_data, name="timeline_data"),
]
