"""Static checks of the Dockerfile (called by helm/check.sh; no image is
built here: the machine has no container engine and no image registry).

Usage: check_dockerfile.py Dockerfile Cargo.toml
- the build stage's rust image is at least Cargo.toml's rust-version;
- dependencies are built before any COPY of src/ (a layer cached across
  source changes);
- the final stage carries OCI labels and runs as a non-root numeric user;
- every absolute path the default CMD names is copied into the final stage
  (a bare `docker run` must not fail on a file the image does not ship).
"""

import re
import sys
import tomllib

dockerfile, manifest = sys.argv[1:]
lines = []
for raw in open(dockerfile).read().replace("\\\n", " ").splitlines():
    raw = raw.strip()
    if raw and not raw.startswith("#"):
        lines.append(raw)
failures = []
rust_version = tomllib.load(open(manifest, "rb"))["package"]["rust-version"]
froms = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
image = re.match(r"FROM\s+rust:([0-9.]+)", lines[froms[0]])
version = lambda v: tuple(int(x) for x in v.split("."))
if not image or version(image.group(1)) < version(rust_version):
    failures.append(f"build image {lines[froms[0]]!r} is older than rust-version {rust_version}")
build = lines[froms[0]:froms[-1]]
copy_src = next((i for i, line in enumerate(build) if re.match(r"COPY\s+src\b", line)), None)
dep_build = next((i for i, line in enumerate(build) if "cargo build" in line), None)
if copy_src is None or dep_build is None or dep_build > copy_src:
    failures.append("no dependency build before `COPY src`: every source change rebuilds every crate")
final = lines[froms[-1]:]
labels = " ".join(line for line in final if line.upper().startswith("LABEL "))
for key in ("title", "version", "revision", "licenses", "description"):
    if f"org.opencontainers.image.{key}=" not in labels:
        failures.append(f"final stage lacks the OCI label org.opencontainers.image.{key}")
users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
if not users or not re.match(r"^[1-9][0-9]*(:[0-9]+)?$", users[-1]):
    failures.append("final stage does not run as a non-root numeric user")
cmds = [line for line in final if line.upper().startswith("CMD ")]
copied = " ".join(line.split()[-1] for line in final if line.upper().startswith("COPY "))
for path in re.findall(r'"(/[^"]+)"', cmds[-1] if cmds else ""):
    if path not in copied:
        failures.append(f"CMD names {path}, which the image does not ship")
if failures:
    print("\n".join("   FAIL " + f for f in failures), file=sys.stderr)
    sys.exit(1)
print(f"   rust image >= {rust_version}, dependency layer before sources, OCI labels, user {users[-1]}, CMD paths shipped")
