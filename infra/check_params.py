#!/usr/bin/env python3
"""Checks that every Bicep file parses and that the parameter files and the deployment guide agree with
infra/main.bicep.

Run by `make checkov` (so by `make test`) with the Python that has checkov. Without a Bicep compiler at hand, this
catches what a reviewer misses: a file checkov silently could not read, a parameter renamed in main.bicep but not
in a .bicepparam file, a required parameter left out, a guide command naming a file or parameter that does not
exist.
"""

import re
import sys
from pathlib import Path

INFRA = Path(__file__).resolve().parent
ROOT = INFRA.parent
ENVIRONMENTS = ("dev", "staging", "prod")

problems = []


def declared_params(bicep: Path) -> dict:
    """Top-level `param name type [= default]` declarations: name -> has a default."""
    params = {}
    for line in bicep.read_text().splitlines():
        m = re.match(r"param\s+(\w+)\s+\w+(\s*=)?", line)
        if m:
            params[m.group(1)] = bool(m.group(2))
    return params


# checkov reports a Bicep file it cannot parse as a "parsing error" and still passes, checking nothing in it. Its
# parser (pycep, installed with checkov) is also the nearest thing to a compiler here: every file must parse.
try:
    from pycep import BicepParser
except ImportError:
    problems.append("pycep is not installed: run this with the Python that has checkov (make checkov)")
else:
    parser = BicepParser()
    for bicep in sorted(INFRA.rglob("*.bicep")):
        try:
            parser.parse(text=bicep.read_text())
        except Exception as error:  # the parser raises lark's exceptions, of several kinds
            first = str(error).splitlines()[0]
            problems.append(f"{bicep.relative_to(ROOT)}: does not parse: {first}")

main = INFRA / "main.bicep"
params = declared_params(main)
required = {name for name, has_default in params.items() if not has_default}

for env in ENVIRONMENTS:
    file = INFRA / "params" / f"{env}.bicepparam"
    if not file.exists():
        problems.append(f"{file.relative_to(ROOT)}: missing")
        continue
    text = file.read_text()
    using = re.search(r"^using\s+'([^']+)'", text, re.M)
    if not using or (file.parent / using.group(1)).resolve() != main:
        problems.append(f"{file.relative_to(ROOT)}: does not say `using '../main.bicep'`")
    given = dict(re.findall(r"^param\s+(\w+)\s*=\s*(.*)$", text, re.M))
    for name in sorted(set(given) - set(params)):
        problems.append(f"{file.relative_to(ROOT)}: param {name} is not declared in infra/main.bicep")
    for name in sorted(required - set(given)):
        problems.append(f"{file.relative_to(ROOT)}: required param {name} is not set")
    if given.get("environmentName", "").strip() != f"'{env}'":
        problems.append(f"{file.relative_to(ROOT)}: environmentName must be '{env}'")

guide = INFRA / "README.md"
text = guide.read_text()
for env in ENVIRONMENTS:
    if f"infra/params/{env}.bicepparam" not in text:
        problems.append(f"infra/README.md: never names infra/params/{env}.bicepparam")
for path in sorted(set(re.findall(r"\b(infra/[\w./-]+\.(?:bicep|bicepparam|py|md))\b", text))):
    if not (ROOT / path).exists():
        problems.append(f"infra/README.md: names {path}, which does not exist")
for variable in sorted(set(re.findall(r"readEnvironmentVariable\('(\w+)'", "".join(
        (INFRA / "params" / f"{env}.bicepparam").read_text() for env in ENVIRONMENTS
        if (INFRA / "params" / f"{env}.bicepparam").exists())))):
    if variable not in text:
        problems.append(f"infra/README.md: never mentions {variable}, which the parameter files read")
for name in sorted(set(re.findall(r"`param (\w+)", text))):
    if name not in params:
        problems.append(f"infra/README.md: mentions param {name}, which infra/main.bicep does not declare")

# The settings the relay reads on Azure come from functionapp.bicep: those it needs are set there, and each one the
# deployment sets is in the guide's table.
app = (INFRA / "modules" / "functionapp.bicep").read_text()
block = re.search(r"var settings = union\(extraAppSettings, \{(.*?)^\}\)", app, re.S | re.M)
if not block:
    problems.append("infra/modules/functionapp.bicep: no `var settings = union(extraAppSettings, {...})`")
else:
    settings = set(re.findall(r"^\s+(\w+):", block.group(1), re.M))
    needed = {"RELAY_STATE_URL", "RELAY_POLICY", "AZURE_CLIENT_ID", "ServiceBusConnection__fullyQualifiedNamespace",
              "RELAY_AZUREML_SUBSCRIPTION_ID", "RELAY_AZUREML_WORKSPACE_IDS"}
    for name in sorted(needed - settings):
        problems.append(f"infra/modules/functionapp.bicep: does not set {name}, which the relay reads on Azure")
    for name in sorted(n for n in settings if n.startswith("RELAY_")):
        if f"`{name}`" not in text:
            problems.append(f"infra/README.md: the settings table does not list {name}, which the deployment sets")

# A zone-redundant app on a host account in one zone stops with that zone.
if not re.search(r"zoneRedundant \? 'Standard_ZRS'", (INFRA / "modules" / "storage.bicep").read_text()):
    problems.append("infra/modules/storage.bicep: the host account's SKU does not follow zoneRedundant")

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"parameter files and infra/README.md agree with infra/main.bicep ({len(params)} params, {len(ENVIRONMENTS)} environments)")
