from django.urls import path

from . import api

urlpatterns = [
    path("events/", api.EventListView.as_view(), name="api-events"),
    path("notifications/", api.NotificationListView.as_view(), name="api-notifications"),
    path("notifications/read/", api.MarkReadView.as_view(), name="api-notifications-read"),
]
