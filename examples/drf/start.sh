#!/bin/sh
# Start the DRF example: apply migrations to the SQLite database in $DRF_DATA_DIR, create the
# users in $DRF_USERS (JSON, optional), then run gunicorn on $DRF_BIND (default 127.0.0.1:8000).
# $PYTHON picks the interpreter (default python3); gunicorn runs as `$PYTHON -m gunicorn` so it
# uses the same one. Extra arguments go to gunicorn.
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
: "${DRF_DATA_DIR:=${TMPDIR:-/tmp}/portcullis-drf}"
export DRF_DATA_DIR
"$PYTHON" manage.py migrate --noinput -v 0
"$PYTHON" manage.py seed_users
exec "$PYTHON" -m gunicorn peopleapi.wsgi:application \
  --bind "${DRF_BIND:-127.0.0.1:8000}" \
  --workers "${DRF_WORKERS:-2}" --worker-class gthread --threads "${DRF_THREADS:-4}" \
  --timeout "${DRF_WORKER_TIMEOUT:-30}" --graceful-timeout 5 --keep-alive 75 \
  --access-logfile - "$@"
