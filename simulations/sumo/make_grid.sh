#!/usr/bin/env bash
# Builds and runs SUMO's 3x3 signalised grid with detectors (recipe: simulations/sumo/README.md).
#
#   make_grid.sh OUT_DIR [--seed N] [--freq S] [--end S] [--period P] [--no-run]
#
# OUT_DIR gets grid.net.xml, detectors.add.xml, grid.rou.xml, grid.sumocfg and, unless --no-run,
# out/e1.xml, out/e2.xml, out/tls_states.xml, out/tripinfo.xml. --seed picks the network's and the
# demand's seed (default 42), --freq the detector period in seconds (default 5), --end the last
# departure (default 900), --period the mean seconds between departures (default 1.0).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: make_grid.sh OUT_DIR [--seed N] [--freq S] [--end S] [--period P] [--no-run]}"
shift
seed=42 freq=5 end=900 period=1.0 run=1
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --freq) freq="$2"; shift 2 ;;
    --end) end="$2"; shift 2 ;;
    --period) period="$2"; shift 2 ;;
    --no-run) run=0; shift ;;
    *) echo "make_grid.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v sumo >/dev/null || { echo "make_grid.sh: sumo not found (apt-get install -y --no-install-recommends sumo sumo-tools)" >&2; exit 3; }
export SUMO_HOME="${SUMO_HOME:-/usr/share/sumo}"
# Debian installs traci/sumolib into the system Python.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
export PYTHONPATH="$SUMO_HOME/tools${PYTHONPATH:+:$PYTHONPATH}"

mkdir -p "$out/out"
cd "$out"
netgenerate --grid --grid.number=3 --grid.length=200 --grid.attach-length=200 \
  --default.lanenumber=2 --default.speed=13.89 --default-junction-type=priority \
  --tls.set A0,A1,A2,B0,B1,B2,C0,C1,C2 --tls.default-type=static --no-turnarounds true \
  --seed "$seed" -o grid.net.xml >/dev/null
"$py" "$here/gen_detectors.py" grid.net.xml detectors.add.xml --freq "$freq" >/dev/null
"$py" "$SUMO_HOME/tools/randomTrips.py" -n grid.net.xml -b 0 -e "$end" -p "$period" \
  --fringe-factor 5 --min-distance 300 --seed "$seed" --prefix veh \
  --trip-attributes 'departLane="best" departSpeed="max"' --validate \
  -o grid.trips.xml -r grid.rou.xml >/dev/null
cat > grid.sumocfg <<CFG
<configuration>
  <input>
    <net-file value="grid.net.xml"/>
    <route-files value="grid.rou.xml"/>
    <additional-files value="detectors.add.xml"/>
  </input>
  <random_number><seed value="$seed"/></random_number>
  <report><no-step-log value="true"/><no-warnings value="true"/></report>
</configuration>
CFG
if [ "$run" = 1 ]; then
  sumo -c grid.sumocfg --tripinfo-output out/tripinfo.xml >/dev/null
fi
echo "$out"
