# clayops: one image for web, workers and the cron scheduler (compose.yaml runs each).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLAYOPS_NO_VENV=1 \
    CLAYOPS_VAR_DIR=/app/var

WORKDIR /app
# The locked, hashed runtime dependencies (requirements/runtime.txt, from `manage.py lock`).
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.txt

COPY . .
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && chmod -R a+rX /app/staticfiles \
    && useradd --system --home /app clayops \
    && mkdir -p /app/var && chown clayops /app/var && chmod 0700 /app/var
USER clayops

EXPOSE 8000
CMD ["gunicorn", "clayops.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4", "--graceful-timeout", "20"]
