import gc
import logging
import os
from pathlib import Path
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clayops.settings")
log = logging.getLogger("clayops.wsgi")
application = get_wsgi_application()


def warm() -> int:
    """Import every view, build the URL names' table and compile the project's templates now, as
    the web process starts, so the first page each process serves (after a deploy, a restart,
    gunicorn replacing a worker) costs what every later one does. Then the objects made so far
    are moved out of the garbage collector's sight (gc.freeze): its collections during a page
    walk only what the page made. Returns how many templates were compiled; a template that does
    not compile is left for its page to report."""
    from django.conf import settings
    from django.template import engines
    from django.urls import NoReverseMatch, get_resolver, reverse

    resolver = get_resolver()
    resolver.reverse_dict  # noqa: B018 - imports every view, builds what {% url %} looks names up in
    for name, (_prefix, namespace) in resolver.namespace_dict.items():
        # A namespace under a prefix (admin/) gets its own table the first time one of its names is
        # reversed ({% url 'admin:index' %} on every page): reverse one of them now.
        for view in namespace.reverse_dict:
            if isinstance(view, str):
                try:
                    reverse(f"{name}:{view}")
                    break
                except NoReverseMatch:
                    continue
    compiled = 0
    engine = engines["django"]
    dirs: Any = settings.TEMPLATES[0]["DIRS"]
    folders = [Path(folder) for folder in dirs]
    for folder in folders:
        for path in sorted(folder.rglob("*.html")):
            try:
                engine.get_template(path.relative_to(folder).as_posix())
                compiled += 1
            except Exception:  # its page reports it; the web process starts all the same
                log.exception("template %s does not compile", path)
    gc.collect()
    gc.freeze()
    return compiled


try:
    warm()
except Exception:  # a faster first page is not worth a web tier that does not start
    log.exception("warming the web process up failed; its first pages will be slower")
