#!/usr/bin/env bash
# Install what citygrid needs on a Debian machine, then the Python environment in .venv.
#   scripts/bootstrap.sh run    the service + pgBackRest (PostGIS itself is installed by `citygrid db start`)
#   scripts/bootstrap.sh test   + Chromium, CJK fonts, GDAL (ogr2ogr) for the tests
#   scripts/bootstrap.sh bench  + wrk and GDAL for the benchmarks
# As root it installs missing Debian packages; as another user it prints the command and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
purpose=${1:-run}

need_pkgs=()
need() { # need COMMAND-OR-PATH PACKAGE
  if [[ $1 == /* ]]; then [[ -e $1 ]] || need_pkgs+=("$2"); else command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2"); fi
}

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || need python3 python3
"$PY" -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
need pgbackrest pgbackrest  # backups of the own cluster (citygrid db backup; the restore test)
case $purpose in
  test)  need /usr/bin/chromium chromium; need /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc fonts-noto-cjk
         need ogr2ogr gdal-bin ;;
  bench) need ogr2ogr gdal-bin; need wrk wrk ;;
esac

if ((${#need_pkgs[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    echo "missing Debian packages; run as root:" >&2
    echo "    apt-get update && apt-get install -y ${need_pkgs[*]}" >&2
    exit 1
  fi
fi

# Extras per purpose (pyproject.toml): the service needs none; the tests add `test` and `analytics`
# (reference implementations), the benchmarks `bench` (their anchors, e.g. tipg).
case $purpose in
  test)  extras='[test,analytics]' ;;
  bench) extras='[bench]' ;;
  *)     extras='' ;;
esac
stamp=.venv/.installed-$( (cat pyproject.toml constraints.txt; echo "$extras") | sha1sum | cut -c1-12)
if [[ ! -f $stamp ]]; then
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -c constraints.txt -e ".$extras" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c 'import citygrid, fastapi, geopandas, geoalchemy2, playwright' \
    || { echo "the Python environment did not install" >&2; exit 1; }
  rm -f .venv/.installed-*
  touch "$stamp"
fi
