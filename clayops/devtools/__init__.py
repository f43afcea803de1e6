"""Development tools, out of the domain's way: the Clay simulator, the embedded Redis (valkey from
a wheel) and the virtual-environment bootstrap that manage.py runs before Django is importable.

Nothing in the domain modules imports from here; only settings (the embedded Redis when REDIS_URL is
unset), management commands, tests and benchmarks do. This package imports nothing itself, so
manage.py can load devtools.venv with the standard library alone.
"""
