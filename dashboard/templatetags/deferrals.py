"""Why waiting leads wait (clayops.deferral), for templates that are rendered without the view's help."""

from __future__ import annotations

from django import template

from clayops import deferral

register = template.Library()


@register.simple_tag
def card_deferrals(card) -> list[deferral.BannerLine]:
    """The banner lines of an overview card: those the overview view attached, else (a card an
    action re-renders alone) read now for that one webhook."""
    lines = getattr(card, "deferrals", None)
    if lines is None:
        lines = deferral.banners([card.webhook.pk], use_cache=False).get(card.webhook.pk, [])
    return lines
