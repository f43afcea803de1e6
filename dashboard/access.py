"""Who may see and who may act. Viewers see every page; operators (permission clayops.operate) act."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from clayops.provisioning import can_operate, can_view

__all__ = ["can_operate", "can_view", "operator_required", "viewer_required"]


def login_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Django's login_required, except that an htmx request (a poll after the session ended) makes
    the whole page go to the login form instead of swapping the form into a fragment."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponseBase:
        if not request.user.is_authenticated:
            htmx = getattr(request, "htmx", None)
            if htmx:
                try:
                    back = htmx.current_url_abs_path or "/"
                except ValueError:  # a malformed HX-Current-URL header (say "http://[x"): back home
                    back = "/"
                return HttpResponseClientRedirect(redirect_to_login(back).url)
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapper


def viewer_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Anonymous → login page; logged in but in neither role → 403."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponseBase:
        if not can_view(request.user):
            raise PermissionDenied("You have no role in clayops: ask an operator to add you to viewers.")
        return view(request, *args, **kwargs)

    return wrapper


def operator_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Anonymous → login page; viewers and everyone else without clayops.operate → 403."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponseBase:
        if not can_operate(request.user):
            raise PermissionDenied("Only operators may do this.")
        return view(request, *args, **kwargs)

    return wrapper


class HtmxHttpRequest(HttpRequest):
    """A request that went through django-htmx's middleware (for type checking)."""

    htmx: HtmxDetails
