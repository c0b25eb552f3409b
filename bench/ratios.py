"""Checks benchmark targets against lines in the peers' format.

Usage: python3 bench/ratios.py RESULTS TARGET...
A TARGET is "ours/peer<=1.5" (a ratio measured in the same run), "ours>=1e6"
or "ours==0" (an absolute bound), or "~ours/peer" (a ratio printed for
orientation, no target). Lines starting with '#' are notes and are ignored.
"""
import re
import sys

vals = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 2 and not line.startswith("#"):
        try:
            vals[parts[0]] = float(parts[1])
        except ValueError:
            pass

spec = re.compile(r"^(~?)([\w.]+)(?:/([\w.]+))?(?:(<=|>=|==)([-+0-9.e]+))?$")
ops = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
       "==": lambda a, b: a == b}

print("\ntargets against peers from this run")
for target in sys.argv[2:]:
    m = spec.match(target)
    if not m:
        sys.exit(f"ratios.py: cannot read target '{target}'")
    info, ours, peer, op, bound = m.groups()
    if ours not in vals or (peer and (peer not in vals or vals[peer] <= 0)):
        print(f"  {ours}{'/' + peer if peer else ''}: missing")
        continue
    value = vals[ours] / vals[peer] if peer else vals[ours]
    name = f"{ours} / {peer}" if peer else ours
    if info or not op:
        print(f"  for orientation: {name} = {value:.3f}")
        continue
    verdict = "met" if ops[op](value, float(bound)) else "NOT met"
    print(f"  {name} = {value:.2f}  (target {op} {bound}: {verdict})")
