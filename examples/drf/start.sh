#!/bin/sh
# Start the DRF example: apply migrations to the SQLite database in $DRF_DATA_DIR, create the
# users in $DRF_USERS (JSON, optional), then run gunicorn on $DRF_BIND (default 127.0.0.1:8000).
# Extra arguments go to gunicorn.
#
# The interpreter: $PYTHON if set (it must have the packages), else the first Python on PATH that
# can import Django, DRF, simplejwt and gunicorn: `python3` first, then every other python3 on
# PATH, then every python3.N and python, in PATH order (so a pyenv or venv python3 without Django
# does not hide Debian's /usr/bin/python3). gunicorn runs as `$PYTHON -m gunicorn`, so it uses that same interpreter.
# None found: the packages to install are printed and the exit status is 3.
#
# $DRF_DATA_DIR defaults to ${XDG_STATE_HOME:-$HOME/.local/state}/portcullis-drf: per user (a
# shared /tmp folder would belong to whoever ran first, and other users could read or plant its
# database), outside the repository (a container build or `git clean` never carries it along).
set -eu
cd "$(dirname "$0")"

MODULES='django, rest_framework, rest_framework_simplejwt, gunicorn'
has_modules () { "$1" -c "import $MODULES" >/dev/null 2>&1; }

find_python () {
  first=$(command -v python3 2>/dev/null) || first=
  if [ -n "$first" ] && has_modules "$first"; then echo "$first"; return 0; fi
  # Every python3 on PATH first (cheap, and usually the answer), then python3.N and python.
  for names in 'python3' 'python3.[0-9] python3.[0-9][0-9] python'; do
    old_ifs=$IFS; IFS=:
    for dir in $PATH; do
      IFS=$old_ifs
      for name in $names; do
        for candidate in "${dir:-.}"/$name; do
          [ "$candidate" != "$first" ] && [ -f "$candidate" ] && [ -x "$candidate" ] || continue
          if has_modules "$candidate"; then echo "$candidate"; return 0; fi
        done
      done
    done
    IFS=$old_ifs
  done
  return 1
}

missing () {
  cat >&2 <<EOF
start.sh: $1 import Django, Django REST Framework, simplejwt and gunicorn
($MODULES). Install them, then run start.sh again:
  Debian/Ubuntu: sudo apt-get install python3-django python3-djangorestframework python3-djangorestframework-simplejwt gunicorn
  pip:           python3 -m pip install Django djangorestframework djangorestframework-simplejwt gunicorn
                 (the pinned versions: python3 -m pip install -r examples/drf/requirements.txt)
or set PYTHON to an interpreter that has them.
EOF
  exit 3
}

if [ -n "${PYTHON:-}" ]; then
  has_modules "$PYTHON" || missing "PYTHON=$PYTHON cannot"
else
  PYTHON=$(find_python) || missing "no Python on PATH can"
fi

: "${DRF_DATA_DIR:=${XDG_STATE_HOME:-$HOME/.local/state}/portcullis-drf}"
export DRF_DATA_DIR
[ -d "$DRF_DATA_DIR" ] || mkdir -p -m 700 "$DRF_DATA_DIR"   # a new folder: for its owner only
"$PYTHON" manage.py migrate --noinput -v 0
"$PYTHON" manage.py seed_users
exec "$PYTHON" -m gunicorn peopleapi.wsgi:application \
  --bind "${DRF_BIND:-127.0.0.1:8000}" \
  --workers "${DRF_WORKERS:-2}" --worker-class gthread --threads "${DRF_THREADS:-4}" \
  --timeout "${DRF_WORKER_TIMEOUT:-30}" --graceful-timeout 5 --keep-alive 75 \
  --access-logfile - "$@"
